"""The checkpoint error: each names the checkpoint, the tensor or field, the expected and found."""

from __future__ import annotations

from megatron_scir.config.errors import UserError


class CheckpointError(UserError):
    """A checkpoint is incomplete, of another model shape, or lacks a tensor the model needs."""
