"""Every closed set of config values, defined once as a ``StrEnum`` and imported where used.

A member equals its string (``LossMode.SCIR == "scir"``), so config fields stay plain strings
(YAML, overrides and checkpoint metadata are unchanged) while code compares against members
instead of retyped literals. ``choices(E)`` lists the values for error messages.
"""

from __future__ import annotations

from enum import StrEnum


class TransformerImpl(StrEnum):
    """``model.transformer_impl``: the layer spec."""

    LOCAL = "local"
    SDPA = "sdpa"
    TE = "te"


class Dtype(StrEnum):
    """``model.params_dtype`` (names as torch spells them; short names in ``DTYPE_ALIASES``)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


# Short spellings accepted on the command line (``scir convert mcore-to-hf --dtype bf16``).
DTYPE_ALIASES = {"fp32": Dtype.FLOAT32, "bf16": Dtype.BFLOAT16, "fp16": Dtype.FLOAT16}


class Fp8Format(StrEnum):
    """``model.fp8`` (null = off)."""

    HYBRID = "hybrid"
    E4M3 = "e4m3"


class Fp8Recipe(StrEnum):
    """``model.fp8_recipe``."""

    DELAYED = "delayed"
    TENSORWISE = "tensorwise"
    BLOCKWISE = "blockwise"
    MXFP8 = "mxfp8"


class RecomputeGranularity(StrEnum):
    """``model.recompute_granularity`` (null = off)."""

    SELECTIVE = "selective"
    FULL = "full"


class RecomputeMethod(StrEnum):
    """``model.recompute_method``."""

    UNIFORM = "uniform"
    BLOCK = "block"


class Backend(StrEnum):
    """``parallel.distributed_backend``."""

    AUTO = "auto"
    NCCL = "nccl"
    GLOO = "gloo"


class LossMode(StrEnum):
    """``scir.mode``: the training objective (SCIR_SPEC §6)."""

    SCIR = "scir"
    SRLM = "srlm"
    DPO = "dpo"


class Divergence(StrEnum):
    """``scir.divergence``: D(P_G, P_I) of L_cons (SCIR_SPEC §3)."""

    SYM_KL = "sym_kl"
    JS = "js"
    MSE = "mse"


class ConsistencyGrad(StrEnum):
    """``scir.consistency_grad``: which side L_cons trains (SCIR_SPEC §3)."""

    BOTH = "both"
    CONFIDENT_TEACHER = "confident_teacher"
    JUDGE_TEACHER = "judge_teacher"
    IMPLICIT_TEACHER = "implicit_teacher"


class ImplicitReference(StrEnum):
    """``scir.implicit_reference``: the model the implicit reward model compares πθ with
    (SCIR_SPEC §1)."""

    CURRENT = "current"
    """M_t, the DPO reference: P_I = ½ for every pair at the first step of an iteration."""
    PREVIOUS = "previous"
    """M_{t−1} (M_0 at t = 1): the reward the last iteration learned, informative from the first
    step; the DPO term keeps πref = M_t."""


class PairSelection(StrEnum):
    """``scir.selection``: the pairs SCIR's DPO term trains on (SCIR_SPEC §4)."""

    CONSISTENT = "consistent"
    """The pairs the implicit reward and the judge agree on, with the agreed label."""
    ALL = "all"
    """Selection off (an ablation): every pair the judge gives a label, with the judge's label,
    recomputed each step."""


class PrefLoss(StrEnum):
    """``scir.pref_loss``: ℓ_pref on consistent / labelled pairs (SCIR_SPEC §4)."""

    DPO = "dpo"
    IPO = "ipo"


class PrefNormalization(StrEnum):
    """``scir.pref_normalization`` (SCIR_SPEC §4)."""

    PAIRS = "pairs"
    SELECTED = "selected"


class JudgeKind(StrEnum):
    """``judge.kind``: the judge format (SCIR_SPEC §2)."""

    PAIRWISE = "pairwise"
    POINTWISE = "pointwise"


class PositionDebias(StrEnum):
    """``judge.position_debias``: how the two pairwise orders combine (SCIR_SPEC §2)."""

    MEAN_PROB = "mean_prob"
    MEAN_LOGIT = "mean_logit"
    NONE = "none"


class TokenizerType(StrEnum):
    """``data.tokenizer_type``."""

    SENTENCEPIECE = "sentencepiece"
    HF = "hf"


class OnBadRecord(StrEnum):
    """``data.on_bad_record``."""

    ERROR = "error"
    SKIP = "skip"


class TruncatedResponses(StrEnum):
    """``data.truncated_responses``: pair building's policy for cut responses (SCIR_SPEC §7)."""

    KEEP = "keep"
    FLAG = "flag"
    DROP = "drop"


class LongPrompts(StrEnum):
    """``generation.long_prompts``: prompts over ``data.max_prompt_length`` are cut or skipped."""

    TRUNCATE = "truncate"
    SKIP = "skip"


class Engine(StrEnum):
    """``generation.engine``."""

    AUTO = "auto"
    STATIC = "static"
    DYNAMIC = "dynamic"
    VLLM = "vllm"


class LrDecayStyle(StrEnum):
    """``train.lr_decay_style``."""

    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


class PromptSlices(StrEnum):
    """``iteration.prompt_slices``: which prompts of the pool iteration t answers."""

    DISJOINT = "disjoint"
    ALL = "all"


class TooFewPairs(StrEnum):
    """``iteration.too_few_pairs``: an iteration whose pairs do not fill one global batch."""

    REPEAT = "repeat"
    SKIP = "skip"
    ERROR = "error"


def choices(enum: type[StrEnum]) -> tuple[str, ...]:
    """The values of ``enum``, in definition order (for messages and argparse)."""
    return tuple(member.value for member in enum)
