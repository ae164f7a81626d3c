"""lm-eval-harness on an iteration's Hugging Face export (``iteration.lm_eval_tasks``).

Runs ``lm_eval.simple_evaluate`` with its ``hf`` model on the folder ``checkpoint.export_hf``
wrote (float32, the GPU when there is one), with the tasks of ``iteration.lm_eval_tasks`` and the
task YAMLs of ``iteration.lm_eval_include_path``; every numeric result but the standard errors
comes back as ``lm_eval/<task>/<metric>`` (``acc,none`` → ``acc``) and joins the iteration
metrics (``metrics.jsonl``, TensorBoard, W&B / MLflow). Global rank 0 only: lm-eval loads its
own copy of the model on one device.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from megatron_scir.config import Config, ConfigError

PREFIX = "lm_eval"


def check_lm_eval(cfg: Config) -> None:
    """Refuse, before the work, lm-eval tasks without the package."""
    if cfg.iteration.lm_eval_tasks and importlib.util.find_spec("lm_eval") is None:
        raise ConfigError(
            "iteration.lm_eval_tasks needs the lm-eval package: pip install -e .[lm_eval]"
        )


def run_lm_eval(cfg: Config, hf_dir: str | os.PathLike) -> dict[str, float]:
    """The lm-eval scores of the model in ``hf_dir`` on ``iteration.lm_eval_tasks``."""
    try:
        import lm_eval  # lazy: optional
        import torch
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError(
            "iteration.lm_eval_tasks needs the lm-eval package: pip install -e .[lm_eval]"
        ) from None
    it = cfg.iteration
    manager = TaskManager(include_path=it.lm_eval_include_path)
    unknown = [t for t in it.lm_eval_tasks if t not in manager.all_tasks]
    if unknown:
        raise ConfigError(
            f"iteration.lm_eval_tasks: lm-eval knows no task {', '.join(map(repr, unknown))} "
            "(set iteration.lm_eval_include_path to the folder of its YAML)"
        )
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={os.fspath(hf_dir)},dtype=float32",
        tasks=list(it.lm_eval_tasks),
        task_manager=manager,
        device="cuda" if torch.cuda.is_available() else "cpu",
        batch_size=it.lm_eval_batch_size,
        limit=it.lm_eval_limit,
    )
    return scores(out["results"])


def scores(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"lm_eval/<task>/<metric>": value}`` of lm-eval's ``results`` (no standard errors)."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            metric = key.split(",")[0]
            if isinstance(value, int | float) and not isinstance(value, bool) and not (
                metric.endswith("_stderr") or metric == "sample_len"
            ):
                flat[f"{PREFIX}/{task}/{metric}"] = float(value)
    return flat
