"""The CPU layer: Megatron-Core's optimizer clips gradients exactly as on GPU, and collectives
refuse non-contiguous tensors as NCCL does (on by default in the test harness)."""

from __future__ import annotations

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed


def _sgd_step_delta(rank, world_size, clip):
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    from megatron_scir.config import load_config
    from megatron_scir.models import build_gpt_model
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.parallel.state import initialize_model_parallel

    cfg = load_config("tiny")
    initialize_model_parallel(cfg.parallel)
    torch.manual_seed(0)
    (model,) = wrap_with_ddp([build_gpt_model(cfg)], cfg)
    opt = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="sgd",
            lr=1.0,
            sgd_momentum=0.0,
            weight_decay=0.0,
            clip_grad=clip,
            params_dtype=torch.float32,
        ),
        [model],
    )
    before = [p.detach().clone() for p in model.parameters()]
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    loss = model(tokens, torch.arange(16).expand(2, 16), None, labels=tokens).mean()
    opt.zero_grad()
    loss.backward()
    model.finish_grad_sync()
    _, grad_norm, _ = opt.step()
    delta = torch.cat(
        [(p.detach() - b).flatten() for p, b in zip(model.parameters(), before, strict=True)]
    )
    return float(grad_norm), float(delta.norm())


def test_megatron_optimizer_clips_the_global_gradient_norm_on_cpu():
    (result,) = run_distributed(_sgd_step_delta, 1, args=(1e-3,))
    grad_norm, update_norm = result
    assert grad_norm > 1e-3  # the clip is active
    assert abs(update_norm - 1e-3) < 1e-6  # SGD with lr 1: the update is the clipped gradient
    ((unclipped_norm, unclipped_update),) = run_distributed(_sgd_step_delta, 1, args=(0.0,))
    assert abs(unclipped_update - unclipped_norm) < 1e-4 * unclipped_norm


def _strided(rows: int = 4) -> torch.Tensor:
    """``[rows, 3]``, every other column of a ``[rows, 6]`` tensor: a non-contiguous view."""
    return torch.arange(rows * 6, dtype=torch.float32).reshape(rows, 6)[:, ::2]


def _megatron_sp_output_layer(x: torch.Tensor) -> None:
    """The SP output layer (Megatron's own all-gather alias) on ``x`` ``[s/tp, b, h]``."""
    from megatron.core import ModelParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear

    from megatron_scir.config import ParallelConfig
    from megatron_scir.parallel import state

    parallel = ParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True)
    state.initialize_model_parallel(parallel)
    try:
        layer = ColumnParallelLinear(
            x.size(-1),
            8,
            config=ModelParallelConfig(tensor_model_parallel_size=2, sequence_parallel=True),
            init_method=torch.nn.init.zeros_,
            bias=False,
            tp_group=state.tp_group(),
        )
        layer(x)
    finally:
        state.destroy_model_parallel()


def _send_or_recv(tensor: torch.Tensor) -> None:
    import torch.distributed as dist

    if dist.get_rank() == 0:
        dist.send(tensor, dst=1)
    else:
        dist.recv(tensor, src=0)


def _collective_cases() -> dict:
    """Each case runs the same call on every rank, so a refused call never leaves a peer waiting."""
    import torch.distributed as dist

    world = dist.get_world_size()
    return {
        "all_gather_into_tensor": lambda: dist.all_gather_into_tensor(
            torch.empty(4 * world, 3), _strided()
        ),
        "reduce_scatter_tensor": lambda: dist.reduce_scatter_tensor(
            torch.empty(4, 3), _strided(4 * world)
        ),
        "all_reduce": lambda: dist.all_reduce(_strided()),
        "broadcast": lambda: dist.broadcast(_strided(), src=0),
        "all_gather": lambda: dist.all_gather([torch.empty(4, 3)] * world, _strided()),
        "send_recv": lambda: _send_or_recv(_strided()),
        "megatron_sp_output_layer": lambda: _megatron_sp_output_layer(
            torch.randn(4, 3, 16).transpose(0, 1)  # [3, 4, 16] seen through a transpose
        ),
        # NCCL's rule, not a stricter one: contiguous tensors pass, and all_gather's output list
        # is staged through one flat buffer by ProcessGroupNCCL, so it may be strided.
        "contiguous_all_gather_into_tensor": lambda: dist.all_gather_into_tensor(
            torch.empty(4 * world, 3), _strided().contiguous()
        ),
        "all_gather_into_strided_outputs": lambda: dist.all_gather(
            [_strided() for _ in range(world)], _strided().contiguous()
        ),
    }


def _run_collective_cases(rank, world_size, names=None):
    from megatron_scir.parallel import cpu_compat

    outcomes = {}
    for name, call in _collective_cases().items():
        if names is not None and name not in names:
            continue
        try:
            call()
            outcomes[name] = None
        except cpu_compat.NonContiguousCollectiveError as error:
            outcomes[name] = str(error)
    return cpu_compat.contiguous_collectives_enforced(), outcomes


@pytest.fixture(scope="module")
def strict_outcomes():
    return run_distributed(_run_collective_cases, 2)


@pytest.mark.parametrize(
    ("case", "collective"),
    [
        ("all_gather_into_tensor", "all_gather_into_tensor"),
        ("reduce_scatter_tensor", "reduce_scatter_tensor"),
        ("all_reduce", "all_reduce"),
        ("broadcast", "broadcast"),
        ("all_gather", "all_gather"),
        ("send_recv", None),
        ("megatron_sp_output_layer", "all_gather_into_tensor"),
    ],
)
def test_harness_collectives_refuse_a_strided_tensor_naming_the_collective(
    strict_outcomes, case, collective
):
    for rank, (enforced, outcomes) in enumerate(strict_outcomes):
        assert enforced, "run_distributed must enforce NCCL's contiguity rule by default"
        message = outcomes[case]
        assert message is not None, f"rank {rank}: {case} accepted a strided tensor"
        expected = collective or ("send/isend" if rank == 0 else "recv/irecv")
        assert f"torch.distributed.{expected} got a non-contiguous tensor" in message
        assert "stride" in message and "Tensors must be contiguous" in message


def test_harness_collectives_accept_what_nccl_accepts(strict_outcomes):
    for _, outcomes in strict_outcomes:
        assert outcomes["contiguous_all_gather_into_tensor"] is None
        assert outcomes["all_gather_into_strided_outputs"] is None


def test_gloo_alone_accepts_strided_tensors_which_is_why_the_harness_is_strict():
    # (gloo does refuse a strided recv buffer itself; the SP collectives it lets through)
    names = ["all_gather_into_tensor", "reduce_scatter_tensor", "all_reduce", "broadcast"]
    ((enforced, outcomes),) = run_distributed(
        _run_collective_cases, 1, args=(names,), strict_collectives=False
    )
    assert not enforced
    assert outcomes == dict.fromkeys(names)
