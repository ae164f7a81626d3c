"""The tiny Llama GPTModel under TP, SP, PP and interleaved PP equals the single-process model
(also with Qwen's qkv bias and QK-norm at TP=2).

Each test is one 2-process gloo run: every rank first computes the TP=1/PP=1 reference (as a DP
replica), then the same master weights are loaded into the layout under test and the same
micro-batches go through Megatron's own schedule (``get_forward_backward_func``).
"""

from __future__ import annotations

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

SEQ, MBS, NUM_MICRO = 16, 2, 2


def _batches(vocab: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(NUM_MICRO):
        tokens = torch.randint(0, vocab, (MBS, SEQ + 1), generator=g)
        mask = torch.ones(MBS, SEQ)
        mask[:, : SEQ // 4] = 0.0  # a "prompt" whose tokens carry no loss
        out.append(
            {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "loss_mask": mask,
                "position_ids": torch.arange(SEQ).expand(MBS, SEQ),
            }
        )
    return out


def _run_schedule(chunks, batches, seq=SEQ) -> float:
    """Forward+backward of all micro-batches; returns the mean loss (broadcast to every rank)."""
    import torch.distributed as dist
    from megatron.core.pipeline_parallel import get_forward_backward_func

    def loss_func(loss_mask, per_token):
        loss = (per_token.float() * loss_mask).sum() / loss_mask.sum()
        return loss, {"lm loss": loss.detach()}

    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        per_token = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])
        return per_token, lambda out: loss_func(batch["loss_mask"], out)

    iters = [iter(batches) for _ in chunks]
    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iters if len(chunks) > 1 else iters[0],
        model=chunks,
        num_microbatches=len(batches),
        seq_length=seq,
        micro_batch_size=MBS,
        forward_only=False,
    )
    local = [float(x["lm loss"]) for x in losses] if losses else []
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, local)
    values = [v for part in everyone for v in part]
    return sum(values) / len(values)


def _layout_vs_reference(rank, world_size, overrides):
    from megatron_scir.config import load_config
    from megatron_scir.models import build_gpt_model
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.parallel.state import destroy_model_parallel, initialize_model_parallel
    from megatron_scir.testing.weights import build_with_master_weights, gather_master

    cfg = load_config("tiny", overrides)
    batches = _batches(cfg.model.vocab_size)
    chunks, master = build_with_master_weights(cfg, seed=3)
    loss = _run_schedule(wrap_with_ddp(chunks, cfg), batches)
    grads = gather_master(chunks, grads=True)
    destroy_model_parallel()

    ref_cfg = load_config("tiny", [o for o in overrides if not o.startswith("parallel.")])
    initialize_model_parallel(ref_cfg.parallel)
    ref = build_gpt_model(ref_cfg)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(master[name])
    ref_loss = _run_schedule(wrap_with_ddp([ref], ref_cfg), batches)
    ref_grads = gather_master([ref], grads=True)
    return loss, ref_loss, grads, ref_grads


def _assert_same_step(result):
    loss, ref_loss, grads, ref_grads = result
    assert abs(loss - ref_loss) < 1e-5, (loss, ref_loss)
    assert grads.keys() == ref_grads.keys()
    for name, ref in ref_grads.items():
        assert ref.abs().max() > 0, f"{name} has no gradient in the reference"
        torch.testing.assert_close(grads[name], ref, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.tensor_model_parallel_size=2"],
        ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
        ["parallel.pipeline_model_parallel_size=2"],
        [
            "model.num_layers=4",
            "parallel.pipeline_model_parallel_size=2",
            "parallel.virtual_pipeline_model_parallel_size=2",
        ],
        # Qwen: the qkv bias is TP-split with the weight; each rank's q/k norms see only its
        # heads, so their gradients are right only after Megatron's TP all-reduce (by name)
        [
            "parallel.tensor_model_parallel_size=2",
            "model.add_qkv_bias=true",
            "model.qk_layernorm=true",
        ],
    ],
    ids=["tp2", "tp2_sp", "pp2_1f1b", "pp2_interleaved_vpp2", "tp2_qkv_bias_qk_norm"],
)
def test_layout_gives_single_process_loss_and_gradients(overrides):
    results = run_distributed(_layout_vs_reference, 2, args=(overrides,))
    for result in results:
        _assert_same_step(result)


def _tp_logits_and_head(rank, world_size, overrides):
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from megatron_scir.config import load_config
    from megatron_scir.models import forward_last_stage
    from megatron_scir.testing.weights import build_with_master_weights

    cfg = load_config("tiny", overrides)
    (model,), _ = build_with_master_weights(cfg, seed=5)
    batch = _batches(cfg.model.vocab_size)[0]
    tokens, pos = batch["tokens"], batch["position_ids"]
    rows, positions = torch.tensor([1, 0, 1]), torch.tensor([3, 9, 15])

    def head_fn(head):
        # rows 0:1 of 2 are a strided view of the hidden states (as the policy rows of a SCIR
        # micro-batch are): the SP all-gather must still get a contiguous tensor
        first_row = head.logits(slice(0, 1))
        return head.logits(slice(None)), first_row, head.logits_at(rows, positions)

    with torch.no_grad():
        full_shard, first_row, picked = forward_last_stage(model, tokens, pos, head_fn)
        gathered = gather_from_tensor_model_parallel_region(full_shard)
    torch.testing.assert_close(first_row, full_shard[:1], atol=1e-6, rtol=1e-6)
    return gathered, full_shard[rows, positions], picked


@pytest.mark.parametrize("sp", [False, True], ids=["tp2", "tp2_sp"])
def test_tp2_logits_equal_tp1_and_head_at_positions_equals_full_rows(sp):
    # (also: the logits of a subset of rows equal those rows of the full logits, under the
    # harness's NCCL contiguity rule)
    overrides = ["parallel.tensor_model_parallel_size=2", f"parallel.sequence_parallel={sp}"]
    ((ref_full, _, ref_picked),) = run_distributed(_tp_logits_and_head, 1, args=([],))
    results = run_distributed(_tp_logits_and_head, 2, args=(overrides,))
    for full, rows_of_full, picked in results:
        torch.testing.assert_close(full, ref_full, atol=1e-5, rtol=0)
        # different GEMM shapes may sum in a different order: equal to float32 rounding
        torch.testing.assert_close(picked, rows_of_full, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        torch.cat([r[2] for r in results], dim=-1), ref_picked, atol=1e-5, rtol=0
    )


def _judge_head_collectives(rank, world_size):
    """The c10d tensors ``logits_at`` moves under TP=2 + SP, forward and backward."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from megatron_scir.config import load_config
    from megatron_scir.models import forward_last_stage
    from megatron_scir.testing.weights import build_with_master_weights

    class Collectives(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.numels = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "c10d":
                tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
                self.numels += [t.numel() for t in tensors if t.is_floating_point()]
            return func(*args, **(kwargs or {}))

    overrides = ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"]
    cfg = load_config("tiny", overrides)
    (model,), _ = build_with_master_weights(cfg, seed=5)
    batch = _batches(cfg.model.vocab_size)[0]
    rows, positions = torch.tensor([1, 0, 1]), torch.tensor([3, 9, 15])
    recorder, shapes = Collectives(), {}

    def head_fn(head):
        shapes["hidden"] = tuple(head.hidden.shape)
        with recorder:
            return head.logits_at(rows, positions)

    picked = forward_last_stage(model, batch["tokens"], batch["position_ids"], head_fn)
    with recorder:
        picked.float().square().sum().backward(inputs=[head_param(model)])
    return recorder.numels, shapes["hidden"], cfg.model.hidden_size


def head_param(model):
    """A weight the backward of ``logits_at`` reaches through the picked hidden vectors."""
    return next(p for n, p in model.named_parameters() if "final_layernorm" in n)


def test_judge_logits_under_sp_reduce_the_picked_vectors_not_the_whole_sequence():
    for numels, (local_s, b, h), hidden in run_distributed(_judge_head_collectives, 2):
        assert numels, "no collective at all: the TP ranks never met"
        # three picked vectors [3, h] travel, forward and backward; [s, b, h] never does
        assert max(numels) == 3 * hidden, numels
        assert max(numels) < 2 * local_s * b * h
