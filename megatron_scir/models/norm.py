"""RMSNorm for the ``local``/``sdpa`` specs that also works under sequence parallelism.

Megatron-Core's torch fallback norm (used when neither TE nor apex is installed) refuses
``sequence_parallel``. Under SP each TP rank normalises a different slice of the sequence, so the
weight's gradient is partial per rank; marking the weight ``sequence_parallel`` makes Megatron's
``finalize_model_grads`` all-reduce it over the TP group, as it does for TE and apex norms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RMSNorm(torch.nn.Module):
    """``y = w · x / sqrt(mean(x²) + eps)``, computed in float32 (as HF Llama does)."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_unused) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return self.weight * normed
