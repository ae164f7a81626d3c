"""``scir evaluate``: the reward-modelling ability of a model (the paper's evaluation), and greedy
answers for an external grader.

Reward-model accuracy on held-out labelled pairs (``label`` 1 = response_1 is better):

- the **implicit reward** P_I = σ(β·[(log πθ(y1) − log πref(y1)) − (log πθ(y2) − log πref(y2))])
  of the policy against a reference model (the iteration's M_t): accuracy of ``P_I > ½``;
- the **judge** P_G (both presentation orders combined with ``judge.position_debias``, and each
  order on its own): accuracy of ``P_G > ½``;
- their **consistency rate**: the fraction of pairs the two agree on with confidence, exactly
  the training step's selection (SCIR_SPEC §4, ``scir.margin`` / ``scir.tie_eps``), and the
  accuracy of the agreed label on those pairs.

A prediction within ``scir.tie_eps`` of ½ has no label and scores ½ (a coin flip), so a model
with no opinion scores 0.5, not 0.

The log-probabilities come from the reference pass's code path (same micro-batches, same
vocab-parallel log-probs and judge read-out as training), run once with the policy (judge read)
and once with the reference model (policy rows only).

Greedy answers: one temperature-0 response per prompt through ``generate``; a grader
``module:function`` (prompt, response → score in [0, 1]) turns them into an oracle accuracy.

The work files (``policy.jsonl``, ``reference.jsonl``) are a cache: each carries the reference
pass's record of its inputs — the pairs file's SHA-256, the model's content identity
(:attr:`~megatron_scir.recipe.ModelSource.identity`: its files checked against the hashes written
at save), the tokenizer's content fingerprint, the config keys — and is recomputed when any of
them differs, so a tokenizer or weights replaced in place never give a stale accuracy. The work
folder is checked writable before any model loads; a disk that fills up during the pass is one
line naming the folder (the file being written stays under its temporary name).
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import importlib
import logging
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_scir.config import Config, ConfigError
from megatron_scir.data import DataError, read_records
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.data.records import Prompt, PromptRecord, messages_json, prompt_text
from megatron_scir.generation import generate, generation_layout
from megatron_scir.generation.runner import check_output
from megatron_scir.losses.bernoulli import Bernoulli
from megatron_scir.losses.selection import select_consistent
from megatron_scir.parallel.runtime import Runtime
from megatron_scir.recipe import ModelSource, load_model
from megatron_scir.recipe.stages import model_inputs_id
from megatron_scir.rewards import implicit_log_odds, implicit_preference, judge_preference
from megatron_scir.training.reference import run_reference_pass

logger = logging.getLogger(__name__)

Grader = Callable[[str, str], float]


@dataclass(frozen=True)
class RewardAccuracy:
    """Accuracies of the two internal reward models against the labels of ``num_pairs`` pairs."""

    num_pairs: int
    judge_accuracy: float
    judge_accuracy_first_shown: float
    """The judge with response_1 shown first only (σ(ℓ12))."""
    judge_accuracy_second_shown: float | None
    """The judge with response_1 shown second only (σ(−ℓ21)); None with one judge order."""
    implicit_accuracy: float | None
    """None without a reference model."""
    consistency_rate: float | None
    agreed_accuracy: float | None
    """Accuracy of the agreed label over the consistent pairs (None when there are none)."""

    def metrics(self) -> dict[str, float | None]:
        return {k: v for k, v in dataclasses.asdict(self).items()}


ITEM_SCORES = "item_scores.json"
"""The evaluate stage's per-item scores (:func:`item_scores`), next to its work files."""


@dataclass(frozen=True)
class OracleScore:
    """Greedy answers graded by a program: the mean score (= accuracy for 0/1 graders)."""

    num_prompts: int
    oracle_accuracy: float


def load_grader(spec: str) -> Grader:
    """Import ``module:function`` (``iteration.grader``) with errors that name it."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            f"iteration.grader={spec!r}: cannot import {module_name}: {error}"
        ) from error
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"iteration.grader={spec!r}: {module_name} has no function {attr!r}")
    return fn


def grade(grader: Grader, prompt: Prompt, response: str, *, spec: str = "grader") -> float:
    """One score, checked to be a number in [0, 1]. A grader gets a prompt string, or a
    conversation as OpenAI-style message dicts."""
    score = grader(prompt if isinstance(prompt, str) else messages_json(prompt), response)
    if not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
        shown = prompt_text(prompt)[:60]
        raise DataError(f"{spec} returned {score!r} for prompt {shown!r}: expected [0, 1]")
    return float(score)


def reward_accuracy(
    runtime: Runtime,
    cfg: Config,
    tokenizer,
    pairs_path: str | os.PathLike,
    *,
    policy: ModelSource,
    reference: ModelSource | None,
    work_dir: str | os.PathLike,
) -> RewardAccuracy:
    """Accuracy of the judge and implicit reward of ``policy`` on labelled pairs.

    Collective (every rank of the world). Runs the policy with the judge, then the reference
    model without it (when ``reference`` is given), each through the reference pass into
    ``work_dir``, and scores on global rank 0.

    Raises:
        DataError: an unlabeled pair in ``pairs_path`` (naming its file and line), a work folder
            that cannot be written (checked before any model loads) or fills up.
    """
    work = Path(work_dir)
    runtime.on_rank_zero(lambda: check_writable(work))
    pairs, _ = runtime.on_rank_zero(
        lambda: read_records(pairs_path, "pairs", columns=cfg.data.columns)
    )
    unlabeled = next((p for p in pairs if p.label is None), None)
    if unlabeled is not None:
        raise DataError(f"{unlabeled.where}: pair {unlabeled.pair_id!r} has no label (1 or 2)")
    policy_file, ref_file = _passes(runtime, cfg, tokenizer, pairs_path, policy, reference, work)
    return runtime.on_rank_zero(lambda: _score(cfg, pairs, policy_file, ref_file))


def _passes(
    runtime, cfg, tokenizer, pairs_path, policy: ModelSource, reference, work: Path
) -> tuple[Path, Path | None]:
    """The policy's pass (with the judge) and, with ``reference``, the reference's: their
    files."""
    policy_file = _log_probs(runtime, cfg, tokenizer, pairs_path, policy, work, judge=True)
    if reference is None:
        return policy_file, None
    return policy_file, _log_probs(
        runtime, cfg, tokenizer, pairs_path, reference, work, judge=False
    )


def _log_probs(
    runtime, cfg, tokenizer, pairs_path, model: ModelSource, work: Path, *, judge: bool
) -> Path:
    """The reference pass of ``model`` over the pairs: policy rows, and judge rows with
    ``judge``, in one layout for grouping and reading (no labels are fixed)."""
    layout = MicroBatchLayout.from_config(cfg, with_judge=judge)
    out = work / ("policy.jsonl" if judge else "reference.jsonl")
    inputs_id = runtime.on_rank_zero(lambda: model_inputs_id(cfg, model))
    chunks = load_model(cfg, model)
    try:
        run_reference_pass(
            runtime, chunks, cfg, tokenizer, pairs_path, out, inputs_id=inputs_id,
            layout=layout, reference_layout=layout,
        )
    except OSError as error:
        raise DataError(
            f"{out}: cannot write the evaluation's work file ({error.strerror or error}): free "
            "space there or pass --out-dir DIR"
        ) from error
    del chunks
    gc.collect()
    return out


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` and prove a file can be written there (global rank 0, before the
    expensive work).

    Raises:
        DataError: naming the folder and why.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".scir-write-check-"):
            pass
    except OSError as error:
        why = error.strerror or str(error)
        if error.errno == errno.ENOTDIR or (error.errno == errno.EEXIST and not folder.is_dir()):
            why = f"{error.filename} is not a folder"
        raise DataError(
            f"{folder}: cannot write the evaluation's work files there ({why}): pass "
            "--out-dir DIR"
        ) from error


def _score(cfg: Config, pairs, policy_file: Path, ref_file: Path | None) -> RewardAccuracy:
    scores, consistent, agreed = _pair_scores(cfg, pairs, policy_file, ref_file)
    mean = lambda key: scores[key].mean().item() if key in scores else None  # noqa: E731
    return RewardAccuracy(
        num_pairs=len(pairs),
        judge_accuracy=mean("judge"),
        judge_accuracy_first_shown=mean("judge_first_shown"),
        judge_accuracy_second_shown=mean("judge_second_shown"),
        implicit_accuracy=mean("implicit"),
        consistency_rate=None if consistent is None else consistent.double().mean().item(),
        agreed_accuracy=agreed,
    )


def pair_verdicts(
    runtime: Runtime,
    cfg: Config,
    tokenizer,
    pairs_path: str | os.PathLike,
    *,
    policy: ModelSource,
    reference: ModelSource | None,
    work_dir: str | os.PathLike,
) -> list[dict[str, Any]]:
    """What ``policy``'s two internal rewards say of each pair (labelled or not): per pair
    ``p_judge`` (P_G that response_1 is better, position-debiased as configured) and, against
    ``reference``, ``p_implicit`` (P_I) and ``consistent`` (SCIR_SPEC §4's selection).
    Collective (every rank gets the list), in the pairs' order."""
    work = Path(work_dir)
    runtime.on_rank_zero(lambda: check_writable(work))
    policy_file, ref_file = _passes(runtime, cfg, tokenizer, pairs_path, policy, reference, work)

    def verdicts() -> list[dict[str, Any]]:
        judge, implicit, _, _ = _rewards(cfg, policy_file, ref_file)
        rows = [{"p_judge": p} for p in judge.p.tolist()]
        if implicit is not None:
            selection = select_consistent(
                implicit, judge, margin=cfg.scir.margin, tie_eps=cfg.scir.tie_eps
            )
            for row, p, agree in zip(
                rows, implicit.p.tolist(), selection.consistent.tolist(), strict=True
            ):
                row.update(p_implicit=p, consistent=agree)
        return rows

    return runtime.on_rank_zero(verdicts)


def _column(records, name: str) -> torch.Tensor:
    return torch.tensor([getattr(r, name) for r in records], dtype=torch.float64)


def _rewards(cfg: Config, policy_file: Path, ref_file: Path | None) -> tuple:
    """Per pair: P_G of the policy's judge, P_I (with ``ref_file``, else None), and the judge's
    log-odds in the first order and (with two orders, else None) the second."""
    policy, _ = read_records(policy_file, "pairs")
    judge_12 = _column(policy, "ref_judge_logits_12")
    two_orders = policy[0].ref_judge_logits_21 is not None
    judge_21 = _column(policy, "ref_judge_logits_21") if two_orders else None
    debias = cfg.judge.position_debias
    judge = Bernoulli(*judge_preference(judge_12, judge_21, position_debias=debias))
    if ref_file is None:
        return judge, None, judge_12, judge_21
    ref, _ = read_records(ref_file, "pairs")
    delta = implicit_log_odds(
        _column(policy, "ref_logps_1"),
        _column(policy, "ref_logps_2"),
        _column(ref, "ref_logps_1"),
        _column(ref, "ref_logps_2"),
        beta=cfg.scir.beta,
    )
    return judge, Bernoulli(*implicit_preference(delta)), judge_12, judge_21


def _pair_scores(
    cfg: Config, pairs, policy_file: Path, ref_file: Path | None
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, float | None]:
    """Per pair 1 (right side preferred), 0 (wrong) or ½ (within ``scir.tie_eps`` of ½) of the
    judge (``judge``, ``judge_first_shown``, ``judge_second_shown``) and, with ``ref_file``, the
    implicit reward (``implicit``); the consistent pairs and the agreed label's accuracy."""
    first_better = torch.tensor([p.label == 1 for p in pairs])
    tie_eps = cfg.scir.tie_eps
    judge, implicit, judge_12, judge_21 = _rewards(cfg, policy_file, ref_file)
    scores = {
        "judge": _scores(judge.centered(), first_better, tie_eps),
        "judge_first_shown": _scores(torch.sigmoid(judge_12) - 0.5, first_better, tie_eps),
    }
    if judge_21 is not None:
        scores["judge_second_shown"] = _scores(
            torch.sigmoid(-judge_21) - 0.5, first_better, tie_eps
        )
    if implicit is None:
        return scores, None, None
    scores["implicit"] = _scores(implicit.centered(), first_better, tie_eps)
    selection = select_consistent(implicit, judge, margin=cfg.scir.margin, tie_eps=tie_eps)
    consistent, agreed = selection.consistent, None
    if consistent.any():
        right = selection.first_chosen[consistent] == first_better[consistent]
        agreed = right.double().mean().item()
    return scores, consistent, agreed


def _scores(centered: torch.Tensor, first_better: torch.Tensor, tie_eps: float) -> torch.Tensor:
    """Per pair 1 (right side preferred), 0 (wrong side) or ½ (within ``tie_eps``)."""
    right = (centered > 0) == first_better
    return torch.where(centered.abs() <= tie_eps, 0.5, right.double())


def item_scores(
    cfg: Config,
    *,
    pairs_path: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    answers_path: str | os.PathLike | None = None,
    grader_spec: str | None = None,
) -> dict[str, list]:
    """Every evaluation item's score, for statistics over items (global rank 0, after
    :func:`reward_accuracy` wrote ``work_dir`` and :func:`greedy_answers` ``answers_path``).

    Returns:
        ``pair_ids`` and the per-pair scores of :func:`reward_accuracy` (``judge``,
        ``judge_first_shown``, ``judge_second_shown``, ``implicit``: 1, 0 or ½), and
        ``prompt_ids`` with ``oracle`` (the grader's score of each greedy answer), for what was
        given.
    """
    out: dict[str, list] = {}
    if pairs_path is not None and work_dir is not None:
        pairs, _ = read_records(pairs_path, "pairs", columns=cfg.data.columns)
        work = Path(work_dir)
        ref_file = work / "reference.jsonl"
        scores, _, _ = _pair_scores(
            cfg, pairs, work / "policy.jsonl", ref_file if ref_file.is_file() else None
        )
        out["pair_ids"] = [p.pair_id for p in pairs]
        out.update({key: value.tolist() for key, value in scores.items()})
    if answers_path is not None and grader_spec is not None:
        records, scores = _answer_scores(answers_path, grader_spec)
        out["prompt_ids"] = [r.prompt_id for r in records]
        out["oracle"] = scores
    return out


def greedy_answers(
    runtime: Runtime,
    cfg: Config,
    tokenizer,
    prompts_path: str | os.PathLike | list[PromptRecord],
    out_path: str | os.PathLike,
    *,
    model: ModelSource,
    progress: bool | None = None,
) -> Path:
    """One greedy answer per prompt of ``prompts_path`` (a data source, or the records) from
    ``model`` into ``out_path`` (the generations format, resumable), in the generation layout.
    Collective."""
    greedy = dataclasses.replace(
        cfg.generation, temperature=0.0, top_k=0, top_p=1.0, num_responses=1
    )
    run_cfg = dataclasses.replace(cfg, generation=greedy, parallel=generation_layout(cfg.parallel))
    if isinstance(prompts_path, list):
        prompts = prompts_path
    else:
        prompts, _ = read_records(
            prompts_path, "prompts", on_bad_record=cfg.data.on_bad_record,
            columns=cfg.data.columns,
        )
    identity = runtime.on_rank_zero(lambda: model.identity)
    # the answers file: writable, unlocked, made by this model if it exists (before the load)
    runtime.on_rank_zero(lambda: check_output(out_path, prompts, run_cfg, inputs_id=identity))
    chunks = load_model(run_cfg, model)
    generate(
        runtime, chunks, tokenizer, prompts, out_path, run_cfg, progress=progress,
        inputs_id=identity,
    )
    del chunks
    gc.collect()
    return Path(out_path)


def grade_answers(answers_path: str | os.PathLike, grader_spec: str) -> OracleScore:
    """The mean grader score of the first response of every record of ``answers_path``."""
    _, scores = _answer_scores(answers_path, grader_spec)
    accuracy = sum(scores) / len(scores) if scores else math.nan
    return OracleScore(num_prompts=len(scores), oracle_accuracy=accuracy)


def _answer_scores(answers_path: str | os.PathLike, grader_spec: str) -> tuple[list, list]:
    """The answer records and the grader's score of each one's first response (0 for none)."""
    grader = load_grader(grader_spec)
    records, _ = read_records(answers_path, "generations")
    scores = [
        grade(grader, r.prompt, r.responses[0], spec=grader_spec) if r.responses else 0.0
        for r in records
    ]
    return records, scores
