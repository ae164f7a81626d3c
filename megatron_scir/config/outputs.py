"""Which config keys change an output: declared once, for every stage of the self-rewarding loop.

A key is named ``"section.key"``; a pattern ending in ``.`` (``"model."``) names a whole section.
Each stage of ``scir iterate`` (:data:`STAGE_ORDER`) declares the keys it reads itself
(:data:`STAGE_INPUTS`); :data:`NEUTRAL` declares the keys that never change what a stage means
(speed, logging, where things go, how far the run goes, the layout). Two users read it:

- the stage fingerprints (``iteration/stages.py``), which refuse a rerun whose settings would
  change a finished stage's outputs: a stage depends on its own keys and those of the stages
  that feed it (:func:`stage_keys`), less every neutral key. Any layout loads any checkpoint,
  so a rerun with another layout continues the run.
- the reference pass's input hash (``training/reference.py``), which keys a file that must be
  reproduced bit for bit (SCIR_SPEC §4): the reference stage's own keys
  (:func:`reference_config_inputs`). The layout decides the exact bits, so there the keys of
  :data:`LAYOUT` count although they are neutral for resuming a stage.

No torch: the CLI and the driver read this before any model exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from megatron_scir.config.schema import Config

__all__ = [
    "LAYOUT",
    "NEUTRAL",
    "SOURCE",
    "STAGE_INPUTS",
    "STAGE_ORDER",
    "flat_config",
    "matches",
    "reference_config_inputs",
    "select",
    "stage_inputs",
    "stage_keys",
]

SOURCE = "source"
"""Not a config key: what M_0 is (a checkpoint, an HF folder, a random init); the caller's."""

STAGE_ORDER = ("init", "sft", "generate", "pairs", "reference", "train", "export", "evaluate")
"""The stages of one iteration, in the order their outputs feed each other."""

LAYOUT = (
    "parallel.tensor_model_parallel_size",
    "parallel.pipeline_model_parallel_size",
    "parallel.virtual_pipeline_model_parallel_size",
    "parallel.sequence_parallel",
)
"""Neutral for resuming a stage (any layout loads any checkpoint), but part of the outputs that
are reproduced bit for bit (``exact=True``): the layout decides the exact bits."""

NEUTRAL = (
    "logging.",
    "parallel.",  # the layout (LAYOUT counts for exact outputs), the optimizer's sharding, comms
    "iteration.run_dir",
    "iteration.num_iterations",
    "checkpoint.save",
    "checkpoint.save_interval",
    "checkpoint.keep_last",
    "checkpoint.export_hf",
    "generation.max_batch_size",
    "generation.chunk_size",
    "generation.engine",
    "data.num_workers",
    "data.max_truncated_fraction",  # refuses a stage or lets it run; never changes its output
    # Acts only on an iteration whose pairs do not fill one global batch, and that iteration's
    # pairs marker records what it did (too_few_pairs, pairs_repeated, training_skipped): a
    # finished stage it did not act on is the same under every policy, so a run stopped by
    # ``error`` continues with ``repeat`` or ``skip`` (the error's advice).
    "iteration.too_few_pairs",
)
"""Keys that never change what a stage means: speed, logging, where things go, how many
iterations the run has, the layout."""

# The reference file's micro-batches (the training micro-batches of the first epoch) and what
# each row holds: the data keys that decide them.
_REFERENCE_DATA = tuple(
    f"data.{key}"
    for key in (
        *("tokenizer_type", "tokenizer_path", "chat_template", "on_bad_record"),
        *("max_prompt_length", "max_response_length", "judge_max_length"),
        *("shuffle", "group_by_length", "packed_sequences", "pad_to_multiple_of"),
    )
)

# What the prompts of a generation are: the pool, how it is read, tokenized, rendered and cut.
_PROMPT_DATA = tuple(
    f"data.{key}"
    for key in (
        *("prompts", "on_bad_record", "tokenizer_type", "tokenizer_path", "chat_template"),
        *("max_prompt_length", "columns"),
    )
)

STAGE_INPUTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "init": (SOURCE, "model.", "checkpoint.load", "train.seed"),
        "sft": ("iteration.seed_sft", "data.", "judge.", "train."),
        "generate": (
            *("generation.", "iteration.prompts_per_iteration", "iteration.prompt_slices"),
            *_PROMPT_DATA,
        ),
        "pairs": ("scir.mode", "data.pairs_per_prompt", "data.truncated_responses", "train.seed"),
        "reference": (
            *("model.", "judge.", *_REFERENCE_DATA, "scir.mode", "scir.srlm_drop_margin"),
            *("scir.implicit_reference", "scir.previous_model"),
            *("train.micro_batch_size", "train.global_batch_size", "train.seed", *LAYOUT),
        ),
        "train": ("scir.",),
        "export": (),
        "evaluate": (
            *("iteration.eval_pairs", "iteration.eval_prompts", "iteration.grader"),
            *("iteration.lm_eval_tasks", "iteration.lm_eval_include_path"),
            *("iteration.lm_eval_limit", "iteration.lm_eval_batch_size"),
            # the greedy answers' length budget, and how the reward accuracies are read
            *("generation.max_new_tokens", "generation.stop_strings"),
            *("scir.beta", "scir.margin", "scir.tie_eps"),
        ),
    }
)
"""The keys each stage reads itself (not those of the stages that feed it)."""


def flat_config(cfg: Config) -> dict[str, Any]:
    """``{"section.key": value}`` of every config key, in schema order (``dataclasses.asdict``)."""
    return {
        f"{section}.{key}": value
        for section, values in dataclasses.asdict(cfg).items()
        for key, value in values.items()
    }


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``patterns`` name key ``name`` (a pattern ending in ``.`` names a section)."""
    return any(name == p or (p.endswith(".") and name.startswith(p)) for p in patterns)


def select(
    flat: Mapping[str, Any], patterns: Iterable[str], *, exact: bool = False
) -> dict[str, Any]:
    """The entries of ``flat`` that ``patterns`` name, less the neutral keys.

    Args:
        flat: ``{"section.key": value}`` (:func:`flat_config`, plus :data:`SOURCE` if wanted).
        patterns: keys and ``"section."`` patterns.
        exact: for an output reproduced bit for bit: the :data:`LAYOUT` keys count.
    """
    patterns = tuple(patterns)
    return {
        name: value
        for name, value in flat.items()
        if matches(name, patterns)
        and not (matches(name, NEUTRAL) and not (exact and matches(name, LAYOUT)))
    }


def stage_keys(stage: str, iteration: int, *, seed_sft: bool = True) -> tuple[str, ...]:
    """The patterns of every key that can reach ``stage``'s outputs at iteration ``iteration``.

    Iteration 0 makes M_0 and (but for ``init``) the seed SFT, M_1; iteration 1 depends on its
    own stages up to ``stage``; from iteration 2 on, M_t carries every earlier choice. The
    evaluation adds its own keys (it feeds no other stage). Without seed SFT
    (``seed_sft=False``: M_1 = M_0) the generation and pairs of iteration 1 depend on no seed-SFT
    setting (the data, judge and train sections): a training budget raised after generation,
    as a budget refusal advises, continues the run; the stages that read those sections
    themselves (reference, train, evaluate) still count them.
    """
    if stage not in STAGE_INPUTS:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGE_ORDER)}")
    if iteration >= 2:
        upstream = STAGE_ORDER[: STAGE_ORDER.index("export")]
    elif iteration == 0:
        upstream = ("init", "sft") if stage != "init" else ("init",)
    else:
        upstream = STAGE_ORDER[: STAGE_ORDER.index(stage) + 1]
    sft_counts = seed_sft or iteration != 1 or stage not in ("generate", "pairs")
    wanted = tuple(
        k
        for name in upstream
        if name != "evaluate"
        for k in (STAGE_INPUTS[name] if name != "sft" or sft_counts else ("iteration.seed_sft",))
    )
    if stage == "evaluate":
        wanted += STAGE_INPUTS["evaluate"]
    return wanted


def stage_inputs(cfg: Config, stage: str, *, exact: bool = False) -> dict[str, Any]:
    """``{"section.key": value}`` of ``stage``'s own declared inputs (:data:`STAGE_INPUTS`).

    Args:
        cfg: the run config.
        stage: one of :data:`STAGE_ORDER`.
        exact: for an output reproduced bit for bit: the :data:`LAYOUT` keys count.
    """
    if stage not in STAGE_INPUTS:
        raise ValueError(f"unknown stage {stage!r}: one of {', '.join(STAGE_ORDER)}")
    return select(flat_config(cfg), STAGE_INPUTS[stage], exact=exact)


def reference_config_inputs(cfg: Config) -> dict[str, Any]:
    """The config part of the reference file's input hash: the reference stage's own keys.

    The model and judge sections, the data keys that decide the rows and the first epoch's
    micro-batches, ``scir.mode`` and ``scir.srlm_drop_margin``, the micro and global batch size
    and seed, and the TP/PP/VPP/SP layout; JSON-serialisable (``dataclasses.asdict`` values).
    """
    return stage_inputs(cfg, "reference", exact=True)
