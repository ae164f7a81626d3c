"""Stage bookkeeping of a run directory: completion markers and the config they were made with.

Every stage of ``scir iterate`` writes into ``run_dir/iter_<t>/<stage>/`` and, when it has
finished, a marker ``stage.json`` there (written atomically by global rank 0)::

    {"stage": "train", "iteration": 1, "config": {...}, "outputs": {...}, "metrics": {...},
     "wall_s": 12.3}

A stage with a marker is done and is never run again; a stage without one is run (again) from
what it left: the generation stream and the trainer's step checkpoints resume, the other stages
start over (their files are written to a temporary name and renamed). Nothing of a stage is
trusted before its marker exists.

``config`` is the stage's config fingerprint (:func:`fingerprint`): every key that can change
what a stage produces (its own keys and those of the stages that feed it, as declared in
:mod:`megatron_scir.config.outputs`), and for each of those keys that names a file or folder
(:data:`CONTENT_KEYS`) the content fingerprint of what is there now, as ``"<key>#content"``
(:func:`megatron_scir.hashing.content_fingerprint`: SHA-256, cached by ``stat``), and M_0 by its
content identity (``source``). Rerunning with a config — or a prompts, seed, evaluation or
tokenizer file edited in place — that differs from a finished stage's fingerprint is refused
with the keys that differ (:func:`check_unchanged`), because the finished stage's outputs would
silently belong to another experiment. Keys that only change speed, logging, the layout or how
far the run goes (``iteration.num_iterations``) are not part of it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_scir.checkpoint import tokenizer_fingerprint
from megatron_scir.config import Config, ConfigError
from megatron_scir.config.outputs import SOURCE, flat_config, select, stage_keys
from megatron_scir.config.outputs import STAGE_ORDER as STAGE_ORDER  # the driver's, declared there
from megatron_scir.data import atomic_open
from megatron_scir.data.sources import parse_source, source_fingerprint
from megatron_scir.hashing import content_fingerprint

MARKER = "stage.json"
CONTENT_KEYS = (
    "data.prompts",
    "data.seed_sft",
    "data.seed_judge",
    "data.tokenizer_path",
    "iteration.eval_pairs",
    "iteration.eval_prompts",
    "iteration.lm_eval_include_path",
)
"""Config keys that name input files or folders: their content is part of a fingerprint."""
CONTENT_SUFFIX = "#content"


@dataclass
class StageResult:
    """What a finished stage produced: file paths and scalar metrics (JSON-serialisable)."""

    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    wall_s: float = 0.0
    skipped: bool = False
    """Read from an earlier run's marker (not run now)."""


def stage_dir(run_dir: str | os.PathLike, iteration: int, stage: str) -> Path:
    """``run_dir/iter_<t>/<stage>``."""
    return Path(run_dir) / f"iter_{iteration}" / stage


def fingerprint(
    cfg: Config, stage: str, iteration: int, *, source: str, grader_used: bool
) -> dict[str, Any]:
    """The flat ``{"section.key": value}`` of every key that can change ``stage``'s outputs.

    Args:
        cfg: The run config.
        stage: The stage's name (one of :data:`STAGE_ORDER`).
        iteration: The stage's iteration t.
        source: What M_0 is (a checkpoint, an HF folder, a random init): a key of its own.
        grader_used: The stage reads ``iteration.grader`` (dpo pairs are labelled by it).
    """
    wanted = stage_keys(stage, iteration, seed_sft=cfg.iteration.seed_sft)
    if grader_used:
        wanted += ("iteration.grader",)
    selected = select({SOURCE: source, **flat_config(cfg)}, wanted)
    for key in CONTENT_KEYS:
        if selected.get(key) is not None:
            selected[key + CONTENT_SUFFIX] = _content(key, selected[key], cfg.data)
    return selected


def _content(key: str, path: str, data) -> str:
    """The content fingerprint of config key ``key``'s file or folder (``missing`` when
    absent: reading it later reports that); a tokenizer folder by its tokenizer files only
    (an HF model folder's weights are the source's)."""
    try:
        if key == "data.tokenizer_path":
            return tokenizer_fingerprint(data) or "missing"
        source = parse_source(path)
        if source.form == "hub":
            return source_fingerprint(path)
        digest = content_fingerprint(source.path)
        return digest if source.split is None else f"{digest}:{source.split}"
    except OSError as error:
        raise ConfigError(
            f"{key}={path}: {error.filename} cannot be read ({error.strerror})"
        ) from error


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of stage directory ``path`` (None when the stage has not finished)."""
    marker = path / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"{marker} is unreadable ({error}): delete that stage directory to run it again"
        ) from error


def write_marker(path: Path, stage: str, iteration: int, config: dict, result: StageResult) -> None:
    """Mark stage directory ``path`` finished (atomic; call on global rank 0)."""
    path.mkdir(parents=True, exist_ok=True)
    body = {
        "stage": stage,
        "iteration": iteration,
        "config": config,
        "outputs": result.outputs,
        "metrics": result.metrics,
        "wall_s": result.wall_s,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with atomic_open(path / MARKER) as fh:
        fh.write((json.dumps(body, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())


PREEMPTED = "preempted.json"
"""``run_dir/preempted.json``: the last run stopped on a signal after saving (requeue it)."""


def mark_preempted(run_dir: Path, message: str) -> None:
    """Record in ``run_dir`` that this run stopped on a signal (atomic; global rank 0).

    A batch script reads it rather than the exit status alone: once one rank has exited with
    75, ``srun --kill-on-bad-exit`` kills the others wherever they are in their teardown, and
    the step's status is then theirs.
    """
    body = {"message": message, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    run_dir.mkdir(parents=True, exist_ok=True)
    with atomic_open(run_dir / PREEMPTED) as fh:
        fh.write((json.dumps(body) + "\n").encode())


def clear_preempted(run_dir: Path) -> None:
    """Forget an earlier run's :func:`mark_preempted` (global rank 0, when a run starts)."""
    (run_dir / PREEMPTED).unlink(missing_ok=True)


def result_from_marker(marker: Mapping[str, Any]) -> StageResult:
    return StageResult(
        outputs=dict(marker["outputs"]),
        metrics=dict(marker["metrics"]),
        wall_s=float(marker.get("wall_s", 0.0)),
        skipped=True,
    )


def finished_markers(run_dir: str | os.PathLike) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every finished stage under ``run_dir`` with its marker, in iteration then name order."""
    root = Path(run_dir)
    iterations = sorted(
        (p for p in root.glob("iter_*") if p.name[5:].isdigit()), key=lambda p: int(p.name[5:])
    )
    for iteration_dir in iterations:
        for stage_path in sorted(p for p in iteration_dir.iterdir() if p.is_dir()):
            marker = read_marker(stage_path)
            if marker is not None:
                yield stage_path, marker


def iteration_record(
    mode: str | None, t: int, results: Mapping[str, StageResult]
) -> dict[str, Any]:
    """One flat metrics record for iteration ``t``: every stage's metrics (``reference/x`` as
    ``reference_x``) and the wall time of each stage that did something."""
    record: dict[str, Any] = {"iteration": t}
    if mode is not None:
        record["mode"] = mode
    for name, result in results.items():
        for key, value in result.metrics.items():
            record[key.replace("reference/", "reference_")] = value
        if result.outputs or result.metrics:
            record[f"wall_s/{name}"] = result.wall_s
    return record


def finished_records(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records ``run_iterations`` returned for a run directory's finished iterations, read
    from the stage markers (nothing is built or run): iteration 0 when it was evaluated, then
    t = 1, 2, … for as long as iteration t's evaluate stage has finished. ``mode`` is the
    ``scir.mode`` the run's stages were fingerprinted with (absent in a seed-SFT-only run)."""
    stages: dict[int, dict[str, StageResult]] = {}
    mode = None
    for _, marker in finished_markers(run_dir):
        t = int(marker["iteration"])
        stages.setdefault(t, {})[marker["stage"]] = result_from_marker(marker)
        mode = mode or marker.get("config", {}).get("scir.mode")
    records = []
    if "evaluate" in stages.get(0, {}):
        records.append(iteration_record(mode, 0, {"evaluate": stages[0]["evaluate"]}))
    t = 1
    while "evaluate" in stages.get(t, {}):
        done = stages[t]
        records.append(iteration_record(mode, t, {n: done[n] for n in STAGE_ORDER if n in done}))
        t += 1
    return records


def check_unchanged(
    run_dir: str | os.PathLike, fingerprint_of: Callable[[str, int], dict[str, Any]]
) -> None:
    """Refuse to continue a run whose finished stages were made with other settings.

    Args:
        run_dir: The run directory.
        fingerprint_of: ``(stage, iteration) -> fingerprint`` of this invocation.

    A key a stage did not record (a config key added by a later version) counts as unchanged
    while it holds its default: a run continues after an upgrade.

    Raises:
        ConfigError: naming the first finished stage that differs, every differing key with its
            stored and its current value, and the two ways out.
    """
    defaults = flat_config(Config())
    for path, marker in finished_markers(run_dir):
        now = fingerprint_of(marker["stage"], int(marker["iteration"]))
        stored = marker.get("config", {})
        keys = sorted(
            k
            for k in set(stored) | set(now)
            if stored.get(k) != now.get(k)
            and not (k not in stored and k in defaults and now[k] == defaults[k])
        )
        if keys:
            lines = "\n".join(
                f"  {k}: {_short(stored, k)} -> {_short(now, k)}"
                for k in keys
            )
            raise ConfigError(
                f"{path} was finished with other settings; these keys differ (stored -> now):\n"
                f"{lines}\nrerun with the stored values to continue this run, or choose a new "
                "iteration.run_dir (or delete that stage and the ones after it) to start over"
            )


def _short(values: Mapping[str, Any], key: str) -> str:
    if key not in values:
        return "<absent>"
    value = values[key]
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
