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
from megatron_scir.data import build_tokenizer, check_tokenizer_fits_model
from megatron_scir.iteration.driver import run_iterations
from megatron_scir.iteration.evaluate import grade_answers, greedy_answers, reward_accuracy
from megatron_scir.parallel.runtime import parallel_world
from megatron_scir.recipe import ModelSource, load_run_config

__all__ = ["default_eval_dir", "evaluate_job", "iterate"]


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
) -> dict[str, Any]:
    """Reward-model accuracy of ``ckpt`` on labelled ``pairs`` (implicit reward against
    ``ref_ckpt``) and/or its greedy answers to ``prompts`` (graded by ``grader``); rank 0 prints
    the JSON report."""
    if not pairs and not prompts:
        raise ConfigError("scir evaluate needs --pairs (labelled) and/or --prompts with --out")
    if prompts and not out:
        raise ConfigError("scir evaluate --prompts needs --out answers.jsonl")
    cfg, tokenizer = _setup(config, overrides, ckpt=ckpt)
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
            greedy_answers(runtime, cfg, tokenizer, prompts, out, model=policy, progress=progress)
            report["answers"] = out
            grader = grader or cfg.iteration.grader
            if grader:
                score = runtime.on_rank_zero(lambda: grade_answers(out, grader))
                report.update(grader=grader, oracle_accuracy=score.oracle_accuracy)
        if runtime.is_rank_zero:
            print(json.dumps(report, indent=1), flush=True)
    return report


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
