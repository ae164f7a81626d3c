"""The micro-batch as one type: :class:`MicroBatch` (SCIR pairs) and :class:`SftBatch`.

The one description of the tensors a DataModule yields, the collate functions build
(``data/collate.py``), the layout checks (``MicroBatchLayout.validate``) and the forward steps
read. Row order is the layout's (``data/layout.py``, SCIR_SPEC §9): y1 policy rows, y2 policy rows,
then the judge rows, order-major. B rows of S tokens in the padded form; in the packed form every
``[B, S]`` tensor is one row ``[1, T]`` holding the B sequences back to back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NotRequired, TypedDict

if TYPE_CHECKING:
    import torch

__all__ = ["MicroBatch", "SftBatch"]


class SftBatch(TypedDict):
    """b SFT examples (seed stage), each row right-padded to the longest, rounded up."""

    tokens: torch.Tensor
    """int64 ``[b, S]``; the pad id after each sequence."""
    position_ids: torch.Tensor
    """int64 ``[b, S]``: 0..S-1."""
    labels: torch.Tensor
    """int64 ``[b, S]``: ``labels[:, t] = tokens[:, t+1]``; the pad id at the last token."""
    loss_mask: torch.Tensor
    """float32 ``[b, S]``: 1 where ``labels`` is a target (response + EOS, or verdict + EOS)."""


class MicroBatch(SftBatch):
    """k pairs in B = k · (2 + r) sequences (SCIR_SPEC §9).

    ``tokens``, ``position_ids``, ``labels`` and ``loss_mask`` are ``[B, S]`` (packed:
    ``[1, T]``; positions and labels restart in each sequence). ``loss_mask`` is 1 on the response
    tokens (EOS included) of the policy rows only: 0 on prompts, padding and judge rows.
    """

    verdict_positions: torch.Tensor
    """int64 ``[k · r]``: per judge row, the position whose logits predict the verdict/score (the
    judge prompt's last token; packed: counted in the packed row)."""
    response_lengths: torch.Tensor
    """int64 ``[2k]``: ``loss_mask.sum`` per policy row."""
    pair_labels: torch.Tensor
    """float32 ``[k]``: 1 if y1 ≻ y2, 0 if y2 ≻ y1, -1 unknown."""
    pair_indices: torch.Tensor
    """int64 ``[k]``: each pair's index in the DataModule's pair list; -1 for a filler that
    repeats a pair to fill the last micro-batch."""
    cu_seqlens: NotRequired[torch.Tensor]
    """int32 ``[B + 1]``: the packed form's sequence boundaries (padding tail after the last)."""
    ref_logps: NotRequired[torch.Tensor]
    """float32 ``[2k]``: log πref(y|x) of the y1 rows then the y2 rows (pairs with them)."""
    prev_logps: NotRequired[torch.Tensor]
    """float32 ``[2k]``: log π_{t−1}(y|x), same order (``scir.implicit_reference=previous``)."""
