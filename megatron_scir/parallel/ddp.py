"""Wrap model chunks in Megatron-Core's DistributedDataParallel, as the training loop does.

The wrapper owns the gradient buffers (``param.main_grad``), the data-parallel reduction and,
through ``finalize_model_grads``, the sequence-parallel norm-gradient all-reduce and the
embedding/output-layer gradient sync across pipeline stages.
"""

from __future__ import annotations

from megatron_scir.config import Config


def wrap_with_ddp(chunks: list, cfg: Config) -> list:
    """Return ``chunks`` wrapped in DDP with the schedule's grad-finalisation hook installed."""
    from megatron.core.distributed import (  # lazy: Megatron-Core
        DistributedDataParallel,
        DistributedDataParallelConfig,
        finalize_model_grads,
    )

    p = cfg.parallel
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=p.grad_reduce_in_fp32,
        overlap_grad_reduce=p.overlap_grad_reduce,
        overlap_param_gather=p.overlap_param_gather,
        use_distributed_optimizer=p.use_distributed_optimizer,
        average_in_collective=False,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        wrapped.append(
            DistributedDataParallel(
                config=chunk.config,
                ddp_config=ddp_config,
                module=chunk,
                # bucketing only pays off (and is only allowed to overlap) on the first chunk
                disable_bucketing=i > 0,
            )
        )
    config = chunks[0].config
    config.finalize_model_grads_func = finalize_model_grads
    if p.overlap_grad_reduce:
        config.no_sync_func = [w.no_sync for w in wrapped]
        config.grad_sync_func = [w.start_grad_sync for w in wrapped]
        if len(wrapped) == 1:
            config.no_sync_func = config.no_sync_func[0]
            config.grad_sync_func = config.grad_sync_func[0]
    return wrapped
