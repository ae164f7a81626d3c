"""The CPU layer lets Megatron-Core's optimizer clip gradients exactly as on GPU."""

from __future__ import annotations

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
