"""Megatron-Core's optimizer and LR schedule for a run, from the ``train`` section.

Adam through ``megatron.core.optimizer.get_megatron_optimizer``: fp32 parameters train in place;
bf16/fp16 parameters get fp32 master weights (Megatron's ``Float16OptimizerWithFloat16Params``,
fp16 with a dynamic loss scaler); ``parallel.use_distributed_optimizer`` shards the optimizer
state over data-parallel ranks (ZeRO-1). The LR schedule is Megatron's
``OptimizerParamScheduler`` (linear warm-up, then constant / linear / cosine decay to ``min_lr``),
stepped once per optimizer step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from megatron_scir.config import Config
from megatron_scir.config.choices import Dtype


def build_optimizer(cfg: Config, model: Sequence[torch.nn.Module]):
    """The Megatron optimizer over the DDP-wrapped ``model`` chunks."""
    from megatron.core.optimizer import (  # lazy: Megatron-Core
        OptimizerConfig,
        get_megatron_optimizer,
    )

    t, dtype = cfg.train, cfg.model.params_dtype
    config = OptimizerConfig(
        optimizer="adam",
        lr=t.lr,
        min_lr=t.min_lr,
        weight_decay=t.weight_decay,
        adam_beta1=t.adam_beta1,
        adam_beta2=t.adam_beta2,
        adam_eps=t.adam_eps,
        clip_grad=t.clip_grad,
        bf16=dtype == Dtype.BFLOAT16,
        fp16=dtype == Dtype.FLOAT16,
        params_dtype=model[0].config.params_dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer,
    )
    # the groups are the runtime's (Megatron's defaults, which parallel_world initialised)
    return get_megatron_optimizer(config, list(model))


def build_scheduler(cfg: Config, optimizer, num_steps: int):
    """Megatron's ``OptimizerParamScheduler``: warm-up then ``train.lr_decay_style`` decay over
    the run's ``num_steps`` optimizer steps (constant weight decay)."""
    from megatron.core.optimizer_param_scheduler import (  # lazy: Megatron-Core
        OptimizerParamScheduler,
    )

    t = cfg.train
    warmup = min(t.lr_warmup_iters, max(num_steps - 1, 0))
    return OptimizerParamScheduler(
        optimizer,
        init_lr=0.0 if warmup else t.lr,
        max_lr=t.lr,
        min_lr=min(t.min_lr, t.lr),
        lr_warmup_steps=warmup,
        lr_decay_steps=max(num_steps, 1),
        lr_decay_style=t.lr_decay_style,
        start_wd=t.weight_decay,
        end_wd=t.weight_decay,
        wd_incr_steps=max(num_steps, 1),
        wd_incr_style="constant",
    )
