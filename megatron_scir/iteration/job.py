"""``scir iterate`` and ``scir evaluate`` top to bottom: config → world → the loop / the scores.

The config is resolved once, in the training layout, from the model the run starts from
(:func:`megatron_scir.recipe.load_run_config`); the stages that sample switch to the generation
layout themselves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from megatron_scir.config import ConfigError
from megatron_scir.config.validate import GENERATION, SELF_REWARDING, TRAINING
from megatron_scir.convert import export_to_hf
from megatron_scir.data import build_tokenizer, check_tokenizer_fits_model, read_records
from megatron_scir.data.export import preference_rows, write_preference_dataset
from megatron_scir.iteration.answer_files import answer_file
from megatron_scir.iteration.driver import add_tokenizer, run_iterations
from megatron_scir.iteration.evaluate import grade_answers, pair_verdicts, reward_accuracy
from megatron_scir.iteration.lm_eval import check_lm_eval, run_lm_eval
from megatron_scir.iteration.stages import read_marker, stage_dir
from megatron_scir.parallel.runtime import parallel_world
from megatron_scir.recipe import ModelSource, load_run_config

__all__ = ["default_eval_dir", "evaluate_job", "export_pairs_job", "iterate", "iteration_files"]


def iterate(config, overrides, *, hf_dir=None, progress=None, report=True) -> list[dict[str, Any]]:
    """Load and check the config, enter the world, run the loop; the records on every rank."""
    cfg, tokenizer = _setup(config, overrides, hf_dir=hf_dir, uses=(SELF_REWARDING,))
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        return run_iterations(
            runtime, cfg, tokenizer, hf_dir=hf_dir, progress=progress, report=report
        )


def evaluate_job(
    config,
    overrides,
    *,
    ckpt: str,
    ref_ckpt: str | None = None,
    pairs: str | None = None,
    out_dir: str | None = None,
    prompts: str | None = None,
    out: str | None = None,
    grader: str | None = None,
    progress: bool | None = None,
    answer_format: str = "jsonl",
    model_id: str | None = None,
) -> dict[str, Any]:
    """Reward-model accuracy of ``ckpt`` on labelled ``pairs`` (implicit reward against
    ``ref_ckpt``) and/or its greedy answers to ``prompts`` (graded by ``grader``), written in
    ``answer_format`` (:mod:`~megatron_scir.iteration.answer_files`); rank 0 prints the JSON
    report."""
    if prompts and not out:
        raise ConfigError("scir evaluate --prompts needs --out answers.jsonl")
    cfg, tokenizer = _setup(config, overrides, ckpt=ckpt)
    if not pairs and not prompts and not cfg.iteration.lm_eval_tasks:
        raise ConfigError(
            "scir evaluate needs --pairs (labelled), --prompts with --out, and/or "
            "iteration.lm_eval_tasks=[...]"
        )
    report: dict[str, Any] = {"ckpt": ckpt, "ref_ckpt": ref_ckpt}
    policy = ModelSource.checkpoint(ckpt)
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        if pairs:
            work = Path(out_dir or default_eval_dir(ckpt))
            scores = reward_accuracy(
                runtime, cfg, tokenizer, pairs, policy=policy,
                reference=None if ref_ckpt is None else ModelSource.checkpoint(ref_ckpt),
                work_dir=work,
            )
            report.update(pairs=pairs, **scores.metrics())
        if prompts:
            answer_file(
                runtime, cfg, tokenizer, prompts, out, fmt=answer_format, model=policy,
                model_id=model_id or Path(ckpt).resolve().name,
                work_dir=Path(out_dir or default_eval_dir(ckpt)), progress=progress,
            )
            report.update(answers=out, format=answer_format)
            grader = (grader or cfg.iteration.grader) if answer_format == "jsonl" else None
            if grader:
                score = runtime.on_rank_zero(lambda: grade_answers(out, grader))
                report.update(grader=grader, oracle_accuracy=score.oracle_accuracy)
        if cfg.iteration.lm_eval_tasks:  # on the checkpoint's HF export, made once
            hf = Path(out_dir or default_eval_dir(ckpt)) / "hf"
            report.update(runtime.on_rank_zero(lambda: _lm_eval(cfg, ckpt, hf)))
        if runtime.is_rank_zero:
            print(json.dumps(report, indent=1), flush=True)
    return report


def _lm_eval(cfg, ckpt: str, hf: Path) -> dict[str, float]:
    check_lm_eval(cfg)
    if not (hf / "config.json").is_file():
        add_tokenizer(cfg, export_to_hf(ckpt, hf, progress=False))
    return run_lm_eval(cfg, hf)


def export_pairs_job(
    config,
    overrides,
    *,
    out: str,
    pairs: str | None = None,
    ckpt: str | None = None,
    ref_ckpt: str | None = None,
    run_dir: str | None = None,
    iteration: int | None = None,
    chosen_by: str | None = None,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Score ``pairs`` with ``ckpt``'s judge and (against ``ref_ckpt``) its implicit reward,
    then write them as a preference dataset to ``out`` (:mod:`megatron_scir.data.export`).
    ``run_dir`` + ``iteration`` name an iteration of ``scir iterate`` instead: its pairs, the
    model it trained and the model it started from. Rank 0 prints the JSON report."""
    if run_dir is not None:
        if iteration is None:
            raise ConfigError("scir export-pairs --run-dir needs --iteration T")
        pairs, ckpt, ref_ckpt = iteration_files(run_dir, iteration)
    if pairs is None or ckpt is None:
        raise ConfigError(
            "scir export-pairs needs --pairs and --ckpt, or --run-dir and --iteration"
        )
    chosen_by = chosen_by or ("agreed" if ref_ckpt else "judge")
    cfg, tokenizer = _setup(config, overrides, ckpt=ckpt)
    records, _ = read_records(pairs, "pairs", columns=cfg.data.columns)
    if chosen_by == "label" and any(p.label is None for p in records):
        raise ConfigError(f"--chosen-by label: {pairs} holds pairs without a label")
    report: dict[str, Any] = {"pairs": pairs, "ckpt": ckpt, "ref_ckpt": ref_ckpt, "out": out}
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        verdicts = pair_verdicts(
            runtime, cfg, tokenizer, pairs, policy=ModelSource.checkpoint(ckpt),
            reference=None if ref_ckpt is None else ModelSource.checkpoint(ref_ckpt),
            work_dir=Path(out_dir or default_eval_dir(ckpt)),
        )
        if runtime.is_rank_zero:
            rows, left_out = preference_rows(
                records, verdicts, chosen_by=chosen_by, tie_eps=cfg.scir.tie_eps
            )
            form = write_preference_dataset(rows, out)
            report.update(
                format=form, chosen_by=chosen_by, num_pairs=len(records), exported=len(rows),
                left_out=dict(left_out),
            )
            print(json.dumps(report, indent=1), flush=True)
    return report


def iteration_files(run_dir: str | Path, t: int) -> tuple[str, str, str]:
    """``(pairs, M_{t+1}, M_t)`` of iteration ``t`` of a ``scir iterate`` run directory."""
    train = read_marker(stage_dir(run_dir, t, "train"))
    built = read_marker(stage_dir(run_dir, t, "pairs"))
    if train is None or built is None:
        missing = stage_dir(run_dir, t, "train" if train is None else "pairs") / "stage.json"
        raise ConfigError(
            f"{run_dir}: iteration {t} has not finished training (no {missing}): run scir "
            "iterate first"
        )
    before = [stage_dir(run_dir, t - 1, "train")] if t > 1 else []
    before += [stage_dir(run_dir, 0, "sft"), stage_dir(run_dir, 0, "init")]
    start = next(m for m in (read_marker(path) for path in before) if m is not None)
    return built["outputs"]["pairs"], train["outputs"]["checkpoint"], start["outputs"]["checkpoint"]


def default_eval_dir(ckpt: str | Path) -> Path:
    """``<ckpt>/../eval/<ckpt name>``: the work files of one checkpoint's evaluation (each
    checkpoint of a folder has its own; they are a cache keyed by their inputs)."""
    path = Path(ckpt).resolve()
    return path.parent / "eval" / path.name


def _setup(config, overrides, *, hf_dir=None, ckpt=None, uses=()):
    """The validated config (model section from the checkpoint or HF folder) and tokenizer."""
    cfg = load_run_config(
        config, overrides, ckpt=ckpt, hf_dir=hf_dir, uses=(GENERATION, TRAINING, *uses)
    )
    tokenizer = build_tokenizer(cfg.data)
    check_tokenizer_fits_model(tokenizer, cfg.model)
    return cfg, tokenizer
