"""Conversion and checkpoint errors: each names the tensor or field, the expected and the found."""

from __future__ import annotations


class ConversionError(ValueError):
    """A Hugging Face model or folder cannot be converted (architecture, tensor, shape, field)."""


class CheckpointError(ValueError):
    """A checkpoint is incomplete, of another model shape, or lacks a tensor the model needs."""
