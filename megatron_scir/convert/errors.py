"""The conversion error: each names the tensor or field, the expected and the found value.

Checkpoint problems raise :class:`megatron_scir.checkpoint.CheckpointError`.
"""

from __future__ import annotations

from megatron_scir.config.errors import UserError


class ConversionError(UserError):
    """A Hugging Face model or folder cannot be converted (architecture, tensor, shape, field)."""
