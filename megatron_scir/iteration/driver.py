"""``scir iterate``: the self-rewarding loop M_1 → M_2 → … → M_{T+1} (SCIR_SPEC §7).

Top to bottom, in one parallel runtime::

    iteration 0   init       M_0: ``checkpoint.load``, an HF folder, or a random init (saved)
                  sft        seed SFT on instruction + judge data → M_1   (iteration.seed_sft)
                  evaluate   held-out scores of M_1 (and of M_0)          (when configured)
    iteration t   generate   N responses per prompt of the slice, with M_t (engine=vllm: from
                             M_t's HF folder, the last export or one written for the stage)
                  pairs      unlabeled pairs (dpo mode: labelled by the grader); fewer than
                             one global batch: iteration.too_few_pairs (repeat, skip, error)
                  reference  log πref and M_t's judge on every pair (srlm: its labels)
                  train      scir / srlm / dpo, πref = M_t → M_{t+1}
                  export     M_{t+1} in Hugging Face format             (checkpoint.export_hf)
                  evaluate   held-out scores of M_{t+1} against M_t     (when configured)

The model passes between stages as a checkpoint: each stage builds the chunks of its layout in
the one runtime and loads M_t (generation: one chunk per pipeline rank; reference and training:
the training layout, interleaved or not). Wrapping trained modules in Megatron DDP again would
leave the first wrapper's hooks and buffers attached, the generation layout differs from an
interleaved training layout, and a stage that starts from a file gives the same bits whether it
runs after another stage or first in a rerun. Every stage
reseeds every generator with ``(train.seed, t, stage)`` for the same reason.

Each stage writes into ``run_dir/iter_<t>/<stage>/`` and a completion marker
(:mod:`megatron_scir.iteration.stages`); rerunning the same command continues at the first
stage without one. A SIGTERM/SIGUSR1 during training saves and exits with 75 (requeue and
rerun); a kill anywhere else loses at most the stage's unfinished part.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from megatron_scir.checkpoint import latest_checkpoint, resolve_checkpoint, save_checkpoint
from megatron_scir.config import Config, ConfigError
from megatron_scir.config.choices import Engine, ImplicitReference, PromptSlices, TooFewPairs
from megatron_scir.convert import export_to_hf
from megatron_scir.convert.hf_io import asset_files, copy_assets
from megatron_scir.data import DataError, atomic_open, build_pairs, read_records, write_records
from megatron_scir.data.datamodule import judge_scores
from megatron_scir.data.pairs import repeat_pairs
from megatron_scir.generation import PromptEncoder, generate, generation_layout
from megatron_scir.generation import generate_responses as sample
from megatron_scir.generation.vllm_backend import build_vllm_backend
from megatron_scir.iteration.evaluate import (
    ITEM_SCORES,
    grade,
    grade_answers,
    greedy_answers,
    item_scores,
    load_grader,
    reward_accuracy,
)
from megatron_scir.iteration.lm_eval import check_lm_eval, run_lm_eval
from megatron_scir.iteration.report import format_table, plot_iterations
from megatron_scir.iteration.stages import (
    STAGE_ORDER,
    StageResult,
    check_unchanged,
    clear_preempted,
    fingerprint,
    iteration_record,
    mark_preempted,
    read_marker,
    result_from_marker,
    stage_dir,
    write_marker,
)
from megatron_scir.losses import LossModeSpec, PairLabels, loss_mode
from megatron_scir.losses.keys import SELECTED_RATE
from megatron_scir.parallel.runtime import Runtime
from megatron_scir.recipe.model import CHECKPOINT, ModelSource, load_model
from megatron_scir.recipe.stages import consistency_rate, reference_stage, train_stage
from megatron_scir.training.metrics_log import (
    CONSISTENCY_RATE,
    LOSS_PREFIX,
    METRICS_FILE,
    read_jsonl,
    write_jsonl,
)
from megatron_scir.training.signals import StopRequest
from megatron_scir.training.trackers import Trackers, check_trackers, wanted

logger = logging.getLogger(__name__)

STAGE_SEEDS = {name: i for i, name in enumerate(STAGE_ORDER)}
TRAINING_SKIPPED = "training_skipped"
"""The pairs stage's metric (1.0 or 0.0): ``iteration.too_few_pairs`` skipped the training."""
# The columns of the printed table and the curves of the plot.
REPORT_COLUMNS = (
    ("iteration", "iter"),
    ("oracle_accuracy", "oracle acc"),
    ("judge_accuracy", "judge acc"),
    ("implicit_accuracy", "implicit acc"),
    ("consistency_rate", "consistency"),
    ("pairs_built", "pairs"),
    ("pairs_used", "pairs used"),
    ("too_few_pairs", "too few pairs"),  # the policy, in an iteration it acted on
    ("consistency_train_end", "train consistency"),
    ("response_tokens", "resp tokens"),
    # M_t's judge at the start of the iteration (the reference pass): how much of its next-token
    # mass is on the verdicts, and how often its two orders agree
    ("reference_verdict_mass", "verdict mass"),
    ("reference_judge_position_consistency", "judge pos. consistency"),
)
PLOT_METRICS = (
    ("oracle_accuracy", "oracle accuracy (greedy, held-out)"),
    ("judge_accuracy", "judge accuracy (held-out pairs)"),
    ("implicit_accuracy", "implicit-reward accuracy"),
    ("consistency_rate", "IRM-GRM consistency (held-out)"),
    ("pairs_used_fraction", "fraction of pairs trained on"),
    ("loss_total", "final training loss"),
)


class Preempted(Exception):
    """Stopped on SIGTERM/SIGUSR1 (between stages, after a generation chunk, or after a saved
    training step): rerun the command to continue."""


@dataclass(frozen=True)
class IterationRun:
    """One ``scir iterate`` invocation: what every stage needs."""

    runtime: Runtime
    cfg: Config
    tokenizer: Any
    run_dir: Path
    source: ModelSource
    """M_0: ``checkpoint.load``, an HF folder, or a random init."""
    progress: bool | None
    stop: StopRequest
    trackers: Trackers | None = None
    """W&B / MLflow runs of the run directory (global rank 0, ``logging.wandb/mlflow``)."""

    @property
    def mode(self) -> LossModeSpec:
        return loss_mode(self.cfg.scir.mode)

    def run_stage(self, t: int, name: str, body: Callable[[Path], StageResult]) -> StageResult:
        """Run stage ``name`` of iteration ``t`` unless its marker says it is done."""
        path = stage_dir(self.run_dir, t, name)
        marker = self.runtime.on_rank_zero(lambda: read_marker(path))
        if marker is not None:
            return result_from_marker(marker)
        if self.stop.agreed():  # collective: every rank reaches the same stage
            raise Preempted(f"iteration {t}: stopped by {self.signal_name} before {name}")
        if self.runtime.is_rank_zero:
            path.mkdir(parents=True, exist_ok=True)
            logger.info("iteration %d: %s", t, name)
        self.runtime.reseed(self.cfg.train.seed + 1000 * t + STAGE_SEEDS[name])
        start = time.perf_counter()
        result = body(path)
        gc.collect()
        result.wall_s = time.perf_counter() - start
        config = self.fingerprint(name, t)
        self.runtime.on_rank_zero(lambda: write_marker(path, name, t, config, result))
        return result

    @property
    def signal_name(self) -> str:
        return self.stop.signal_name or "a signal on another rank"

    def fingerprint(self, stage: str, t: int) -> dict[str, Any]:
        grader_used = stage == "pairs" and self.mode.labels == PairLabels.GIVEN
        return fingerprint(
            self.cfg, stage, t, source=self.source.identity, grader_used=grader_used
        )


POLICY_HF = "policy_hf"
"""The generate stage's Hugging Face folder of M_t under ``generation.engine=vllm`` when no
export stage wrote one (iteration 1, or ``checkpoint.export_hf=false``)."""


def run_iterations(
    runtime: Runtime,
    cfg: Config,
    tokenizer,
    *,
    hf_dir: str | None = None,
    progress: bool | None = None,
    report: bool = True,
    evaluate_start: bool = True,
) -> list[dict[str, Any]]:
    """The self-rewarding loop, top to bottom; returns one metrics record per iteration 0..T.

    Collective: every rank of the world calls it with the same config.

    Args:
        runtime: The parallel runtime (``parallel_world(cfg.parallel)``).
        cfg: The run config, validated for training and generation.
        tokenizer: ``build_tokenizer(cfg.data)``.
        hf_dir: Start from this Hugging Face folder instead of ``checkpoint.load``.
        progress: Progress bars on rank 0 (default ``logging.progress``).
        report: Print the table and write metrics.jsonl, TensorBoard and the plot (rank 0).
        evaluate_start: Evaluate the model iteration 1 starts from (iteration 0's record);
            a study whose methods share one seed model evaluates it once.

    Raises:
        Preempted: SIGTERM/SIGUSR1 stopped the run between stages, after a generation chunk
            or after a saved training step (exit 75 and rerun the same command).
        ConfigError: the run directory holds stages finished with other settings.
    """
    run_dir = Path(cfg.iteration.run_dir)
    from megatron_scir.generation.mcore_inference import select_engine  # lazy: Megatron-Core

    select_engine(cfg.generation.engine)  # an engine that cannot run here: before any stage
    source = ModelSource.of(cfg, hf_dir=hf_dir)
    runtime.on_rank_zero(lambda: clear_preempted(run_dir))
    check_trackers(cfg)
    check_lm_eval(cfg)
    trackers = Trackers(run_dir, cfg) if runtime.is_rank_zero and wanted(cfg) else None
    with StopRequest() as stop:
        run = IterationRun(runtime, cfg, tokenizer, run_dir, source, progress, stop, trackers)
        try:
            return _run_iterations(run, report=report, evaluate_start=evaluate_start)
        except Preempted as stopped:
            message = str(stopped)
            runtime.on_rank_zero(lambda: mark_preempted(run_dir, message))
            raise
        finally:
            if trackers is not None:
                trackers.close()


def _run_iterations(run: IterationRun, *, report: bool, evaluate_start: bool) -> list:
    runtime, cfg, run_dir = run.runtime, run.cfg, run.run_dir
    runtime.on_rank_zero(lambda: check_unchanged(run_dir, run.fingerprint))
    pool_size = runtime.on_rank_zero(lambda: _prompt_pool(cfg, run.tokenizer))
    runtime.on_rank_zero(lambda: _check_data_files(cfg, run_dir))

    model = run.run_stage(0, "init", partial(init_model, run)).outputs["checkpoint"]
    first = model
    if cfg.iteration.seed_sft:
        sft = run.run_stage(0, "sft", partial(seed_sft, run, model=model))
        model = sft.outputs["checkpoint"]
    start = _evaluate(run, 0, model, None, first) if evaluate_start else StageResult()
    records = [_record(run, 0, {"evaluate": start})]
    _report(run, records, report)
    # M_{t-1}, the implicit reward's reference under scir.implicit_reference=previous: M_0 at
    # t = 1 (the model seed SFT started from, or scir.previous_model)
    previous = first if cfg.iteration.seed_sft else cfg.scir.previous_model
    model_hf = None  # M_t as a Hugging Face folder, once an export stage has written it
    for t in range(1, cfg.iteration.num_iterations + 1):
        # the slice is read when the stage runs (rank 0 reads it, every rank gets it)
        prompts = partial(runtime.on_rank_zero, partial(_iteration_prompts, cfg, t, pool_size))
        done: dict[str, StageResult] = {}
        done["generate"] = run.run_stage(
            t, "generate",
            partial(generate_responses, run, t=t, model=model, prompts=prompts, hf=model_hf),
        )
        generations = done["generate"].outputs["generations"]
        done["pairs"] = run.run_stage(
            t, "pairs", partial(build_iteration_pairs, run, t=t, generations=generations)
        )
        pairs = done["pairs"].outputs["pairs"]
        if done["pairs"].metrics.get(TRAINING_SKIPPED):  # iteration.too_few_pairs
            done["train"] = run.run_stage(t, "train", partial(skip_training, run, t=t, model=model))
        else:
            done["reference"] = run.run_stage(
                t, "reference",
                partial(reference_pass, run, model=model, pairs=pairs, previous=previous),
            )
            ref_pairs = done["reference"].outputs["pairs"]
            done["train"] = run.run_stage(
                t, "train", partial(train_policy, run, t=t, model=model, pairs=ref_pairs)
            )
        trained = done["train"].outputs["checkpoint"]
        if cfg.checkpoint.export_hf:
            done["export"] = run.run_stage(t, "export", partial(export_model, run, model=trained))
        hf = done["export"].outputs.get("hf") if "export" in done else None
        done["evaluate"] = _evaluate(run, t, trained, model, None, hf=hf)
        records.append(_record(run, t, done))
        _report(run, records, report)
        previous, model, model_hf = model, trained, hf
    return records


# ---------------------------------------------------------------------------------- the stages


def init_model(run: IterationRun, out: Path) -> StageResult:
    """M_0 as a checkpoint: ``checkpoint.load`` as it is, else an HF folder or a random init
    saved under ``out/model``."""
    cfg, source = run.cfg, run.source
    if source.kind == CHECKPOINT:
        return StageResult(outputs={"checkpoint": str(resolve_checkpoint(source.path))})
    chunks = load_model(cfg, source)
    path = save_checkpoint(
        out / "model", chunks, cfg, iteration=0, step=0, assets=_tokenizer_assets(cfg),
        overwrite=True,
    )
    return StageResult(outputs={"checkpoint": str(path)})


def seed_sft(run: IterationRun, out: Path, model: str) -> StageResult:
    """SRLM's IFT + EFT on ``data.seed_sft`` / ``data.seed_judge``: M_0 → M_1."""
    return _train(run, out, 0, model, pairs=None)


def generate_responses(
    run: IterationRun,
    out: Path,
    t: int,
    model: str,
    prompts: Callable[[], list],
    hf: str | None = None,
) -> StageResult:
    """``generation.num_responses`` samples per prompt of the slice (``prompts()``) with M_t
    (resumable). ``generation.engine=vllm`` samples from M_t's Hugging Face folder: ``hf``, the
    previous iteration's export, or one written here for the stage (:func:`policy_hf_folder`)."""
    cfg = run.cfg
    prompts = prompts()
    generation = dataclasses.replace(cfg.generation, seed=cfg.generation.seed + t)
    gen_cfg = dataclasses.replace(
        cfg, generation=generation, parallel=generation_layout(cfg.parallel)
    )
    path = out / "generations.jsonl"
    if cfg.generation.engine == Engine.VLLM:
        folder = run.runtime.on_rank_zero(lambda: policy_hf_folder(cfg, model, out, hf))
        with build_vllm_backend(folder, gen_cfg, run.tokenizer, runtime=run.runtime) as backend:
            stats = sample(
                run.runtime, gen_cfg, backend, run.tokenizer, prompts, path,
                progress=run.progress, should_stop=run.stop.agreed,
            )
        if hf is None and not stats.stopped:  # the stage's own export: the stage is done
            run.runtime.on_rank_zero(lambda: shutil.rmtree(folder, ignore_errors=True))
    else:
        chunks = load_model(gen_cfg, ModelSource.checkpoint(model))
        stats = generate(
            run.runtime, chunks, run.tokenizer, prompts, path, gen_cfg, progress=run.progress,
            should_stop=run.stop.agreed,
        )
        del chunks
    if stats.stopped:
        raise Preempted(f"iteration {t}: generation stopped by {run.signal_name} after a chunk")

    def count() -> dict[str, float]:
        records, _ = read_records(path, "generations")
        responses = [r for record in records for r in record.responses]
        lengths = [len(run.tokenizer.encode(r)) for r in responses]
        truncated = sum(sum(record.truncated) for record in records)
        return {
            "prompts": float(len(records)),
            "responses": float(len(responses)),
            "response_tokens": sum(lengths) / max(len(lengths), 1),
            "responses_truncated": float(truncated),
            "tokens_per_s": stats.tokens_per_second if stats is not None else math.nan,
        }

    return StageResult(outputs={"generations": str(path)}, metrics=run.runtime.on_rank_zero(count))


def build_iteration_pairs(run: IterationRun, out: Path, t: int, generations: str) -> StageResult:
    """Unlabeled pairs from the generations (SCIR_SPEC §7.2); in ``dpo`` mode each pair is
    labelled by ``iteration.grader`` (the oracle) and pairs it grades equal are dropped. Pairs
    that do not fill one global batch are handled here, before the reference pass, by
    ``iteration.too_few_pairs`` (:func:`_too_few_pairs`)."""
    cfg = run.cfg

    def build() -> StageResult:
        records, _ = read_records(generations, "generations")
        pairs, report = build_pairs(
            records,
            pairs_per_prompt=cfg.data.pairs_per_prompt,
            truncated_responses=cfg.data.truncated_responses,
            seed=cfg.train.seed + t,
        )
        built = len(pairs)
        if run.mode.labels == PairLabels.GIVEN:
            pairs = _oracle_labels(cfg, pairs)
        logger.info("iteration %d: %s", t, report.summary())
        metrics = {
            "pairs_built": float(built),
            "pairs_labelled": float(len(pairs)),
            "prompts_without_pairs": float(report.num_prompts_without_pairs),
            "responses_dropped": float(
                report.num_empty + report.num_duplicate + report.num_truncated_dropped
            ),
            "pairs_available": float(len(pairs)),
            "pairs_repeated": 0.0,
            TRAINING_SKIPPED: 0.0,
        }
        if len(pairs) < cfg.train.global_batch_size:
            what = f"{built} built from {report.num_prompts} prompts in {generations}"
            if run.mode.labels == PairLabels.GIVEN:
                what += f", {len(pairs)} graded unequal"
            pairs = _too_few_pairs(cfg, t, pairs, what, metrics)
        path = out / "pairs.jsonl"
        write_records(path, pairs)
        return StageResult(outputs={"pairs": str(path)}, metrics=metrics)

    return run.runtime.on_rank_zero(build)


def _too_few_pairs(cfg: Config, t: int, pairs: list, what: str, metrics: dict) -> list:
    """``iteration.too_few_pairs`` on the ``n < G`` pairs of iteration ``t``: the pairs to write
    (repeated up to G, or as they are when training is skipped), the effect in ``metrics``.

    Raises:
        DataError: under ``error``, one line with the count and the settings a rerun accepts.
    """
    n, g, policy = len(pairs), cfg.train.global_batch_size, cfg.iteration.too_few_pairs
    head = (
        f"iteration {t}: {n} pairs ({what}) do not fill one global batch of "
        f"train.global_batch_size={g}"
    )
    if policy == TooFewPairs.ERROR:
        raise DataError(
            f"{head}: set iteration.too_few_pairs=repeat (every pair, some twice) or skip (no "
            "training this iteration) to continue this run; a smaller train.global_batch_size "
            "needs a new iteration.run_dir (the finished stages were made with this one)"
        )
    metrics["too_few_pairs"] = policy
    if policy == TooFewPairs.REPEAT and pairs:
        filled = repeat_pairs(pairs, g, seed=f"{cfg.train.seed}:{t}")
        metrics["pairs_repeated"] = float(len(filled) - n)
        logger.warning(
            "%s: iteration.too_few_pairs=repeat: training on them with %d copies (seeded) to "
            "fill it", head, len(filled) - n,
        )
        return filled
    metrics[TRAINING_SKIPPED] = 1.0
    reason = "no pair to repeat" if policy == TooFewPairs.REPEAT else "iteration.too_few_pairs=skip"
    logger.warning(
        "%s: %s: TRAINING SKIPPED, no reference pass, M_%d = M_%d", head, reason, t + 1, t
    )
    return pairs


def reference_pass(
    run: IterationRun, out: Path, model: str, pairs: str, previous: str | None
) -> StageResult:
    """log πref with M_t and M_t's judge on every pair (srlm: its fixed labels); under
    ``scir.implicit_reference=previous`` first log π_{t−1} with ``previous``."""
    path = out / "pairs.ref.jsonl"
    implicit_previous = run.cfg.scir.implicit_reference == ImplicitReference.PREVIOUS
    summary = reference_stage(
        run.runtime, run.cfg, run.tokenizer, model=ModelSource.checkpoint(model), pairs=pairs,
        out=path,
        previous=ModelSource.checkpoint(previous) if implicit_previous else None,
    )
    return StageResult(outputs={"pairs": str(path)}, metrics=summary.metrics())


def train_policy(run: IterationRun, out: Path, t: int, model: str, pairs: str) -> StageResult:
    """Train M_t on the pairs with ``scir.mode`` (πref = M_t) → M_{t+1}; then the consistency
    rate of the trained model on the same pairs (forward only)."""
    result, data = _train(run, out, t, model, pairs=pairs, with_data=True)
    num_pairs = len(data.pairs)
    if run.mode.selects_pairs:  # the mean selected (default: consistent) share of the steps
        log = out / "logs" / METRICS_FILE
        steps = run.runtime.on_rank_zero(lambda: read_jsonl(log) if log.is_file() else [])
        selected = [s.get(SELECTED_RATE, s.get(CONSISTENCY_RATE)) for s in steps]
        selected = [value for value in selected if value is not None]
        fraction = sum(selected) / len(selected) if selected else math.nan
        # SCIR's agreement at the first step (0 under implicit_reference=current: P_I = ½)
        first = next((s[CONSISTENCY_RATE] for s in steps if CONSISTENCY_RATE in s), math.nan)
        result.metrics["consistency_train_start"] = first
    else:  # every labelled pair is trained on (srlm drops the judge's unsure ones as -1 labels)
        fraction = sum(p.label is not None for p in data.pairs) / max(num_pairs, 1)
    result.metrics["pairs_used_fraction"] = fraction
    result.metrics["pairs_used"] = fraction * num_pairs if not math.isnan(fraction) else math.nan
    return result


def skip_training(run: IterationRun, out: Path, t: int, model: str) -> StageResult:
    """``iteration.too_few_pairs`` skipped iteration ``t``'s training: M_{t+1} is M_t."""
    if run.runtime.is_rank_zero:
        logger.warning("iteration %d: training skipped (too few pairs): M_%d = M_%d", t, t + 1, t)
    metrics = {"steps": 0.0, "pairs_used": 0.0, "pairs_used_fraction": 0.0}
    return StageResult(outputs={"checkpoint": model}, metrics=metrics)


def export_model(run: IterationRun, out: Path, model: str) -> StageResult:
    """M_{t+1} as a Hugging Face folder (``checkpoint.export_hf``)."""
    def export() -> StageResult:
        path = export_to_hf(model, out / "hf", progress=False)
        add_tokenizer(run.cfg, Path(path))
        return StageResult(outputs={"hf": str(path)})

    return run.runtime.on_rank_zero(export)


def policy_hf_folder(cfg: Config, model: str, out: Path, exported: str | None) -> str:
    """M_t as the Hugging Face folder vLLM samples from (global rank 0; the folder must be on
    storage every node reads, as the checkpoints are): ``exported``, the previous iteration's
    ``checkpoint.export_hf`` folder of the same weights, else ``out/policy_hf``, written once
    (atomically: a rerun after a kill finds it whole or not at all) and removed by the caller
    when the stage is done."""
    if exported is not None:
        return exported
    folder = out / POLICY_HF
    if not (folder / "config.json").is_file():
        export_to_hf(model, folder, progress=False)
        add_tokenizer(cfg, folder)
    return str(folder)


def add_tokenizer(cfg: Config, hf_dir: Path) -> None:
    """The run's tokenizer into an export whose checkpoint carried none (a trained checkpoint
    stores no assets): an HF folder's tokenizer files, or a SentencePiece file as
    ``tokenizer.model``, so the folder loads in transformers, vLLM and lm-eval as it is."""
    source = cfg.data.tokenizer_path
    if source is None or any(p.name.startswith("tokenizer") for p in asset_files(hf_dir)):
        return
    if Path(source).is_dir():
        copy_assets(source, hf_dir)
    elif Path(source).is_file():
        shutil.copy2(source, hf_dir / "tokenizer.model")


def _evaluate(
    run: IterationRun,
    t: int,
    model: str,
    reference: str | None,
    first: str | None,
    *,
    hf: str | None = None,
) -> StageResult:
    """Held-out scores of ``model`` (implicit reward against ``reference``); at iteration 0 also
    the oracle and judge accuracy of M_0 (``first``), when seed SFT produced a different model
    (``*_m0``: what seed SFT changed); lm-eval's scores of its HF export ``hf``
    (``iteration.lm_eval_tasks``)."""
    cfg = run.cfg.iteration
    lm_eval = bool(cfg.lm_eval_tasks) and hf is not None
    if cfg.eval_pairs is None and not (cfg.eval_prompts and cfg.grader) and not lm_eval:
        return StageResult()

    def oracle(ckpt: str, answers: Path) -> float:
        """Greedy answers of ``ckpt`` to the evaluation prompts, graded."""
        greedy_answers(
            run.runtime, run.cfg, run.tokenizer, cfg.eval_prompts, answers,
            model=ModelSource.checkpoint(ckpt), progress=run.progress,
        )
        score = run.runtime.on_rank_zero(lambda: grade_answers(answers, cfg.grader))
        return score.oracle_accuracy

    def body(out: Path) -> StageResult:
        runtime, metrics = run.runtime, {}
        m0 = t == 0 and first is not None and first != model
        if cfg.eval_pairs is not None:
            scores = reward_accuracy(
                runtime, run.cfg, run.tokenizer, cfg.eval_pairs,
                policy=ModelSource.checkpoint(model),
                reference=None if reference is None else ModelSource.checkpoint(reference),
                work_dir=out,
            )
            metrics.update(scores.metrics())
            if m0:
                before = reward_accuracy(
                    runtime, run.cfg, run.tokenizer, cfg.eval_pairs,
                    policy=ModelSource.checkpoint(first), reference=None, work_dir=out / "m0",
                )
                for key in ("judge_accuracy", "judge_accuracy_first_shown",
                            "judge_accuracy_second_shown"):
                    metrics[f"{key}_m0"] = getattr(before, key)
        if cfg.eval_prompts and cfg.grader:
            metrics["oracle_accuracy"] = oracle(model, out / "answers.jsonl")
            if m0:
                metrics["oracle_accuracy_m0"] = oracle(first, out / "answers_m0.jsonl")
        if lm_eval:
            metrics.update(runtime.on_rank_zero(lambda: run_lm_eval(run.cfg, hf)))
        runtime.on_rank_zero(lambda: _write_item_scores(run.cfg, out, m0=m0))
        return StageResult(outputs={"dir": str(out)}, metrics=metrics)

    return run.run_stage(t, "evaluate", body)


# ---------------------------------------------------------------------------------- helpers


def _write_item_scores(cfg: Config, out: Path, *, m0: bool) -> None:
    """``out/item_scores.json`` (``out/m0/item_scores.json`` for M_0): every evaluation item's
    score, which statistics over items read (the study's bootstrap intervals)."""
    it = cfg.iteration
    graded = it.eval_prompts if it.grader else None
    for work, answers in ((out, "answers.jsonl"), (out / "m0", "answers_m0.jsonl"))[: 1 + m0]:
        scores = item_scores(
            cfg,
            pairs_path=it.eval_pairs,
            work_dir=work if it.eval_pairs else None,
            answers_path=out / answers if graded else None,
            grader_spec=it.grader,
        )
        work.mkdir(parents=True, exist_ok=True)
        with atomic_open(work / ITEM_SCORES) as fh:
            fh.write(json.dumps(scores).encode())


def _train(
    run: IterationRun, out: Path, t: int, model: str, *, pairs: str | None, with_data=False
):
    """Train the chunks loaded from ``model`` under ``out/checkpoints`` (resuming there): seed
    SFT (``pairs=None``) or ``scir.mode`` on ``pairs``, then (on pairs) the trained model's
    consistency rate on them. The stage's result, and with ``with_data`` the DataModule."""
    save_dir = out / "checkpoints"
    chunks = load_model(run.cfg, ModelSource.checkpoint(model))
    trained = train_stage(
        run.runtime,
        run.cfg,
        run.tokenizer,
        chunks,
        pairs=pairs,
        save_dir=save_dir,
        log_dir=out / "logs",
        iteration=t,
        resume=True,
        progress=run.progress,
        # the next iteration starts a fresh optimizer: the finished stage keeps weights only
        final_optimizer=False,
        tracker=None if run.trackers is None else (run.trackers, f"iter_{t}/{out.name}"),
    )
    result = trained.result
    if result.preempted:
        raise Preempted(
            f"iteration {t}: training stopped by {run.signal_name} at step {result.state.step}"
        )
    checkpoint = result.checkpoint or latest_checkpoint(save_dir)
    metrics = {
        k.replace("/", "_"): v for k, v in result.metrics.items() if k.startswith(LOSS_PREFIX)
    }
    metrics["steps"] = float(result.state.step)
    metrics["skipped_steps"] = float(result.state.skipped_steps)
    if pairs is not None:
        metrics["consistency_train_end"] = consistency_rate(
            run.runtime, run.cfg, run.tokenizer, trained.chunks, pairs
        )
    stage = StageResult(outputs={"checkpoint": str(checkpoint)}, metrics=metrics)
    return (stage, trained.data) if with_data else stage


def _tokenizer_assets(cfg: Config) -> list[str]:
    path = cfg.data.tokenizer_path
    return [path] if path and Path(path).is_file() else []


def _prompt_pool(cfg: Config, tokenizer) -> int:
    """The prompt pool's size, checked up front: every row is read and validated, and the
    prompts the run will use (T slices, or the one slice of ``prompt_slices=all``) must fit the
    prompt budget (``data.max_truncated_fraction``) before seed SFT or any other stage starts.
    Only those prompts are held, and only while they are checked: each iteration reads its own
    slice again (:func:`_iteration_prompts`), so a pool of millions of rows is never held whole
    nor sent to every rank."""
    if cfg.data.prompts is None:
        raise ConfigError("scir iterate needs data.prompts=FILE (the prompt pool, JSONL)")
    n, iterations = cfg.iteration.prompts_per_iteration, cfg.iteration.num_iterations
    disjoint = cfg.iteration.prompt_slices == PromptSlices.DISJOINT
    keep = None if n is None else range(n * iterations if disjoint else n)
    used, report = read_records(
        cfg.data.prompts, "prompts", on_bad_record=cfg.data.on_bad_record,
        columns=cfg.data.columns, keep=keep,
    )
    size = report.num_records
    n = n or size
    needed = n * iterations
    if disjoint and needed > size:
        raise ConfigError(
            f"iteration.prompt_slices=disjoint needs {needed} prompts ({n} per iteration × "
            f"{iterations} iterations) but {cfg.data.prompts} holds {size}: "
            "lower iteration.prompts_per_iteration or use iteration.prompt_slices=all"
        )
    PromptEncoder.from_config(cfg, tokenizer).encode_all(used)
    return size


def _check_data_files(cfg: Config, run_dir: Path) -> None:
    """Read the seed SFT data (when the stage is still to run) and the evaluation files up
    front: a bad or empty file is one line naming it before M_0 is built, not after seed SFT."""
    policy = cfg.data.on_bad_record
    files = []
    if cfg.iteration.seed_sft and read_marker(stage_dir(run_dir, 0, "sft")) is None:
        files += [(cfg.data.seed_sft, "sft", policy), (cfg.data.seed_judge, "judge", policy)]
    files += [(cfg.iteration.eval_pairs, "pairs", "error")]  # as reward_accuracy reads them
    if cfg.iteration.grader:  # the prompts are answered only to be graded
        files += [(cfg.iteration.eval_prompts, "prompts", policy)]
    for path, kind, on_bad_record in files:
        if path is not None:
            read_records(
                path, kind, on_bad_record=on_bad_record, columns=cfg.data.columns,
                judge_scores=judge_scores(cfg) if kind == "judge" else None,
            )


def _iteration_prompts(cfg: Config, t: int, pool_size: int) -> list:
    """Iteration ``t``'s slice of the prompt pool, read from the file (the pool itself is not
    held): prompts [(t−1)·n, t·n) under ``prompt_slices=disjoint``, the first n under ``all``."""
    n = cfg.iteration.prompts_per_iteration or pool_size
    first = 0 if cfg.iteration.prompt_slices == PromptSlices.ALL else (t - 1) * n
    prompts, _ = read_records(
        cfg.data.prompts, "prompts", on_bad_record=cfg.data.on_bad_record,
        columns=cfg.data.columns, keep=range(first, first + n),
    )
    return prompts


def _oracle_labels(cfg: Config, pairs: list) -> list:
    """Pairs labelled by the grader (modes trained on given labels, ``dpo``): the
    better-graded response is chosen."""
    if cfg.iteration.grader is None:
        raise ConfigError(
            "scir.mode=dpo in scir iterate trains on labelled pairs: set iteration.grader="
            "module:function to label them (or use scir.mode=scir / srlm)"
        )
    grader, spec = load_grader(cfg.iteration.grader), cfg.iteration.grader
    labelled = []
    for pair in pairs:
        s1 = grade(grader, pair.prompt, pair.response_1, spec=spec)
        s2 = grade(grader, pair.prompt, pair.response_2, spec=spec)
        if s1 != s2:
            labelled.append(dataclasses.replace(pair, label=1 if s1 > s2 else 2))
    return labelled


def _record(run: IterationRun, t: int, results: dict[str, StageResult]) -> dict[str, Any]:
    """One flat metrics record for iteration ``t`` (what ``finished_records`` reads back)."""
    return iteration_record(run.cfg.scir.mode, t, results)


def _report(run: IterationRun, records: Sequence[dict[str, Any]], enabled: bool) -> None:
    """Rank 0: rewrite ``metrics.jsonl``, TensorBoard and ``iterations.png``; print the table."""
    if not enabled:
        return

    def write() -> None:
        write_jsonl(run.run_dir / "metrics.jsonl", records)
        if run.cfg.logging.tensorboard:
            _tensorboard(run.run_dir / "tb", records)
        plot_iterations(
            [dict(r, method=run.cfg.scir.mode) for r in records],
            run.run_dir / "iterations.png",
            metrics=PLOT_METRICS,
            title=f"{run.run_dir.name}: scir.mode={run.cfg.scir.mode}",
        )
        if run.trackers is not None:  # each iteration once; the plot as it stands now
            for record in records:
                run.trackers.log("iteration", record["iteration"], record)
            run.trackers.artifact(run.run_dir / "iterations.png")
        print(format_table(records, REPORT_COLUMNS, title=str(run.run_dir)), flush=True)

    run.runtime.on_rank_zero(write)


def _tensorboard(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """The iteration curves as TensorBoard scalars (rewritten whole: reruns never duplicate)."""
    from torch.utils.tensorboard import SummaryWriter  # lazy: TensorBoard only when enabled

    shutil.rmtree(path, ignore_errors=True)
    writer = SummaryWriter(log_dir=str(path))
    try:
        for record in records:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iteration":
                    writer.add_scalar(f"iteration/{key}", value, record["iteration"])
    finally:
        writer.close()

