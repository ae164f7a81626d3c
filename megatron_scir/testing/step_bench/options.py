"""What one step benchmark runs (:class:`StepBenchOptions`) and its constants."""

from __future__ import annotations

from dataclasses import dataclass

from megatron_scir.config.choices import Dtype, TransformerImpl
from megatron_scir.testing.hf import LLAMA_SHAPES as SHAPES

__all__ = [
    "LENGTHS",
    "LOSS_TOLERANCE",
    "MIN_LENGTH",
    "MODES",
    "REF_OFFSET_SCALE",
    "SHAPES",
    "VERDICT_IDS",
    "StepBenchOptions",
]

MODES = ("scir", "dpo", "sft")
LENGTHS = ("uniform", "realistic")  # pair length distributions (batches.synthetic_pairs)
VERDICT_IDS = (17, 200)  # the judge's "first response wins" / "second wins" ids (any shape)
LOSS_TOLERANCE = 1e-4  # float32
REF_OFFSET_SCALE = 20.0  # |log πref − log πθ| spread at the start, as examples/minimal_scir_step.py
MIN_LENGTH = 64  # the shortest policy / judge budget of the random batches


@dataclass(frozen=True)
class StepBenchOptions:
    """One benchmark run (the fields are ``benchmarks/bench_step.py``'s options).

    Attributes:
        shape: the random Llama's shape (a key of :data:`SHAPES`).
        dtype: the weights' dtype (``model.params_dtype``) on both sides.
        pairs: k, pairs per micro-batch.
        micro_batches: M, micro-batches per step.
        policy_length: the policy budget, prompt + response (half each).
        judge_length: the judge budget.
        lengths: the pair length distribution, ``uniform`` or ``realistic``.
        judge_overhead: tokens of the judge template around the prompt and responses.
        steps: timed steps (the median is reported).
        warmup: untimed steps before them.
        modes: the modes to run, of :data:`MODES`.
        transformer_impl: megatron-scir's layer spec (``local`` or ``sdpa``).

    Raises:
        ValueError: on an unknown mode, shape or length distribution, a budget under
            :data:`MIN_LENGTH`, or a count under 1 (``warmup`` under 0).
    """

    shape: str = "small"
    dtype: str = Dtype.FLOAT32
    pairs: int = 2
    micro_batches: int = 1
    policy_length: int = 128
    judge_length: int = 256
    lengths: str = "realistic"
    judge_overhead: int = 140
    steps: int = 3
    warmup: int = 1
    modes: tuple[str, ...] = MODES
    transformer_impl: str = TransformerImpl.SDPA

    def __post_init__(self) -> None:
        object.__setattr__(self, "modes", tuple(self.modes))
        if unknown := sorted(set(self.modes) - set(MODES)):
            raise ValueError(f"--modes: unknown {unknown}; choose from {list(MODES)}")
        if min(self.policy_length, self.judge_length) < MIN_LENGTH:
            raise ValueError(
                f"--policy-length and --judge-length must be at least {MIN_LENGTH} "
                "(random batches)"
            )
        if min(self.pairs, self.micro_batches, self.steps) < 1 or self.warmup < 0:
            raise ValueError("--pairs, --micro-batches and --steps must be >= 1, --warmup >= 0")
        if self.shape not in SHAPES:
            raise ValueError(f"--shape: unknown {self.shape!r}; choose from {sorted(SHAPES)}")
        if self.lengths not in LENGTHS:
            raise ValueError(f"--lengths: unknown {self.lengths!r}; choose from {list(LENGTHS)}")

    @property
    def seq_length(self) -> int:
        """The longest sequence either side can see."""
        return max(self.policy_length, self.judge_length)

    @property
    def checks_loss(self) -> bool:
        """The losses are checked against :data:`LOSS_TOLERANCE` (float32 only)."""
        return self.dtype == Dtype.FLOAT32
