"""The SCIR micro-batch layout (SCIR_SPEC §9), owned by one object.

A micro-batch of k pairs holds B sequences in this order:

    rows [0:k]          policy [x‖y1]
    rows [k:2k]         policy [x‖y2]
    rows [2k + o·k : 2k + (o+1)·k]   judge order o (o < r): J(x, y1, y2) then J(x, y2, y1) for
                        pairwise with position debiasing (r = 2; without it r = 1), J(x, y1) then
                        J(x, y2) for pointwise (r = 2)

B = k · (2 + r). r comes from the judge format (``judges/rows.py``) and is 0 when the batches
carry no judge rows: a loss mode's spec says whether its training batches and its reference pass
read the judge (``losses/modes.py``), and whoever builds the batches (the recipe) builds the
layout once and hands it to the DataModule, the forward step, the reference pass and evaluation.
Below, "row" i means sequence i; the tensors of a micro-batch are :class:`~.batch.MicroBatch`.

Two physical forms (``data.packed_sequences``):

- **padded**: ``[B, S]``, every row right-padded to the micro-batch's own longest sequence,
  rounded up to ``pad_multiple``; S never exceeds :attr:`MicroBatchLayout.seq_length` rounded up.
- **packed**: ``[1, T]``, the B sequences back to back (Megatron's THD format, ``cu_seqlens``),
  T = their total rounded up to ``pad_multiple``; each sequence attends to itself only.

:attr:`MicroBatchLayout.seq_length` is the budget, the longest S a micro-batch can have: the
policy budget (``data.max_prompt_length + data.max_response_length``) without judge rows, else
the larger of it and ``data.judge_max_length``. Torch-free: ``scir plan`` uses the same row
arithmetic.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from megatron_scir.config import Config
from megatron_scir.config.derived import packs_sequences, pad_multiple, policy_seq_length
from megatron_scir.data.judges.rows import judge_rows_per_pair
from megatron_scir.losses.modes import LossModeSpec, loss_mode

__all__ = ["MicroBatchLayout"]

POLICY_ROWS_PER_PAIR = 2


@dataclass(frozen=True, kw_only=True)
class MicroBatchLayout:
    """Rows and length of a SCIR micro-batch (SCIR_SPEC §9; see the module docstring).

    Attributes:
        num_pairs: k, pairs per micro-batch (``train.micro_batch_size``).
        judge_rows_per_pair: r, judge sequences per pair; 0 without judge rows.
        policy_seq_length: the policy budget, prompt + response.
        judge_seq_length: the judge budget (``data.judge_max_length``).
        packed: the packed (THD) form instead of padded rows.
        pad_multiple: padded rows / the packed row are a multiple of this many tokens.
    """

    num_pairs: int
    judge_rows_per_pair: int
    policy_seq_length: int
    judge_seq_length: int
    packed: bool = False
    pad_multiple: int = 1

    @classmethod
    def from_config(cls, cfg: Config, *, with_judge: bool) -> MicroBatchLayout:
        """The layout of a run's micro-batches, with or without judge rows.

        Args:
            cfg: The run config (``train.micro_batch_size``, the ``data`` budgets, packing and
                padding, the judge format).
            with_judge: Whether the batches carry the judge format's rows.
        """
        return cls(
            num_pairs=cfg.train.micro_batch_size,
            judge_rows_per_pair=judge_rows_per_pair(cfg.judge) if with_judge else 0,
            policy_seq_length=policy_seq_length(cfg.data),
            judge_seq_length=cfg.data.judge_max_length,
            packed=packs_sequences(cfg),
            pad_multiple=pad_multiple(cfg),
        )

    @classmethod
    def for_training(cls, cfg: Config, mode: LossModeSpec | None = None) -> MicroBatchLayout:
        """The training layout of a loss mode (default ``scir.mode``): judge rows when its
        loss reads the judge."""
        mode = mode or loss_mode(cfg.scir.mode)
        return cls.from_config(cfg, with_judge=mode.judge_rows)

    @classmethod
    def for_reference(cls, cfg: Config, mode: LossModeSpec | None = None) -> MicroBatchLayout:
        """The reference pass's layout: the training rows, plus judge rows when the mode's
        reference pass reads M_t's judge (srlm's labels)."""
        mode = mode or loss_mode(cfg.scir.mode)
        return cls.from_config(cfg, with_judge=mode.judge_rows or mode.reference_judge)

    @property
    def with_judge(self) -> bool:
        return self.judge_rows_per_pair > 0

    @property
    def seq_length(self) -> int:
        """S: the policy budget alone without judge rows, else max(policy, judge budget)."""
        if not self.with_judge:
            return self.policy_seq_length
        return max(self.policy_seq_length, self.judge_seq_length)

    def padded_length(self, length: int) -> int:
        """``length`` rounded up to a multiple of ``pad_multiple``."""
        return -(-length // self.pad_multiple) * self.pad_multiple

    @property
    def rows_per_pair(self) -> int:
        return POLICY_ROWS_PER_PAIR + self.judge_rows_per_pair

    @property
    def num_rows(self) -> int:
        """B = k · (2 + r)."""
        return self.num_pairs * self.rows_per_pair

    @property
    def num_policy_rows(self) -> int:
        return POLICY_ROWS_PER_PAIR * self.num_pairs

    @property
    def num_judge_rows(self) -> int:
        """J = k · r (also the length of ``verdict_positions``)."""
        return self.judge_rows_per_pair * self.num_pairs

    @property
    def max_packed_tokens(self) -> int:
        """The longest packed row: every sequence of the k pairs at its budget."""
        return self.num_pairs * (
            POLICY_ROWS_PER_PAIR * self.policy_seq_length
            + self.judge_rows_per_pair * self.judge_seq_length
        )

    @property
    def policy_rows(self) -> slice:
        """Rows ``[0:2k]``: y1 rows then y2 rows."""
        return slice(0, self.num_policy_rows)

    def policy_side_rows(self, side: int) -> slice:
        """Rows of response ``side`` (0: y1, 1: y2) of every pair."""
        k = self.num_pairs
        return slice(side * k, (side + 1) * k)

    @property
    def judge_rows(self) -> slice:
        """Rows ``[2k:B]``, all judge rows."""
        return slice(self.num_policy_rows, self.num_rows)

    def judge_order_rows(self, order: int) -> slice:
        """Rows of judge order ``order`` (< r) of every pair."""
        start = self.num_policy_rows + order * self.num_pairs
        return slice(start, start + self.num_pairs)

    def validate(
        self,
        batch: Mapping[str, Any],
        *,
        require_ref_logps: bool = True,
        require_prev_logps: bool = False,
    ) -> None:
        """Check a micro-batch's row counts and per-pair sizes against this layout.

        Args:
            batch: The micro-batch (``tokens`` ``[B, S]`` and the per-pair keys present).
            require_ref_logps: Training batches need ``ref_logps``; the reference pass's
                batches do not have them yet.
            require_prev_logps: ``scir.implicit_reference=previous`` trains on ``prev_logps``.

        Raises:
            ValueError: naming every mismatch and the layout (k pairs, J judge rows).
        """
        k, judge_rows = self.num_pairs, self.num_judge_rows
        tokens = batch["tokens"]
        problems = []
        if self.packed:
            if tokens.dim() != 2 or tokens.size(0) != 1 or "cu_seqlens" not in batch:
                problems.append(
                    f"tokens {tuple(tokens.shape)}: expected packed [1, T] + cu_seqlens"
                )
            elif batch["cu_seqlens"].numel() != self.num_rows + 1:
                problems.append(
                    f"cu_seqlens has {batch['cu_seqlens'].numel()} entries: expected "
                    f"{self.num_rows + 1} ({self.num_rows} sequences)"
                )
        elif tokens.dim() != 2 or tokens.size(0) != self.num_rows:
            problems.append(f"tokens {tuple(tokens.shape)}: expected [{self.num_rows}, S]")
        sizes = {
            "ref_logps": 2 * k,
            "prev_logps": 2 * k,
            "response_lengths": 2 * k,
            "pair_labels": k,
            "verdict_positions": judge_rows,
        }
        problems += [
            f"{key} has {batch[key].numel()} entries: expected {size}"
            for key, size in sizes.items()
            if key in batch and batch[key].numel() != size
        ]
        if require_ref_logps and "ref_logps" not in batch:
            problems.append("ref_logps missing: run the reference pass first (SCIR_SPEC §7.3)")
        if require_prev_logps and "prev_logps" not in batch:
            problems.append(
                "prev_logps missing: scir.implicit_reference=previous reads log π_{t-1} from the "
                "pairs (the reference stage writes them with scir.previous_model)"
            )
        if problems:
            raise ValueError(
                f"micro-batch does not match the SCIR layout for k={k} pairs and {judge_rows} "
                "judge rows (SCIR_SPEC §9; train.micro_batch_size, scir.mode, judge.kind, "
                "judge.position_debias): " + "; ".join(problems)
            )
