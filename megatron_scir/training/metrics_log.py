"""The metrics logs: the per-step log of a training run, and whole JSONL files of records.

- :class:`MetricsLog`: per optimizer step, on global rank 0 only. ``<log_dir>/metrics.jsonl``
  holds one JSON object per step (``{"step": n, ...}``); TensorBoard event files go to
  ``<log_dir>/tensorboard``; a tqdm bar shows :data:`LOSS_TOTAL` and :data:`LR`. A resumed run
  first cuts the JSONL back to the steps its checkpoint covers, so the file never holds a step
  twice or misses one.
- :func:`write_jsonl` / :func:`read_jsonl`: a whole JSONL file of records (the iteration
  driver's ``metrics.jsonl``, the demo's ``results.jsonl``), written atomically (a rerun
  rewrites the file instead of appending duplicates) and read crash-tolerantly (a torn last
  line is skipped with a warning). :func:`read_jsonl` also reads the step log.

**One line format.** Every line here is ``json.dumps(record, sort_keys=True, allow_nan=True)``
(numpy/torch scalars through ``.item()``, paths as text). **NaN policy:** a non-finite float is
written as Python json's bare tokens ``NaN``, ``Infinity`` and ``-Infinity``, which
``json.loads`` (so :func:`read_jsonl`) reads back as floats. Those tokens are not strict JSON:
a strict reader (``jq``, ``JSON.parse``) needs them replaced first. A NaN metric means
"undefined" (e.g. ``reward/margin`` of a step without a consistent pair), not a failure.

**Metric keys** are named constants: :data:`STEP`, the trainer's ``train/*`` keys
(:data:`GRAD_NORM`, :data:`LR`, :data:`SKIPPED_STEPS`, :data:`TOKENS_PER_S`,
:data:`STEP_SECONDS`) and, re-exported from :mod:`megatron_scir.losses.keys` (the layer that
emits them), the loss keys read back: :data:`LOSS_PREFIX`, :data:`LOSS_TOTAL`,
:data:`CONSISTENCY_RATE`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from megatron_scir.data.stream import atomic_open
from megatron_scir.losses.keys import CONSISTENCY_RATE, LOSS_PREFIX, LOSS_TOTAL

__all__ = [
    "CONSISTENCY_RATE",
    "GRAD_NORM",
    "LOSS_PREFIX",
    "LOSS_TOTAL",
    "LR",
    "METRICS_FILE",
    "SKIPPED_STEPS",
    "STEP",
    "STEP_SECONDS",
    "TOKENS_PER_S",
    "MetricsLog",
    "read_jsonl",
    "write_jsonl",
]

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
"""The step log's name under a run's log directory."""

STEP = "step"
"""The optimizer step of a step-log line (1 for the first step)."""
GRAD_NORM = "train/grad_norm"
"""The gradient norm before clipping."""
LR = "train/lr"
"""The learning rate of the step."""
SKIPPED_STEPS = "train/skipped_steps"
"""Steps skipped so far for a NaN/inf loss or gradient norm."""
TOKENS_PER_S = "train/tokens_per_s"
"""Token positions per second (all data-parallel ranks, padding included)."""
STEP_SECONDS = "train/step_seconds"
"""Wall time of the step."""

_BAR_KEYS = (LOSS_TOTAL, LR)


class MetricsLog:
    """Writes step metrics (rank 0 only: every other rank gets a disabled log).

    Args:
        log_dir: Directory of ``metrics.jsonl`` and ``tensorboard/``.
        enabled: False on every rank but global rank 0.
        tensorboard: Also write TensorBoard events (``logging.tensorboard``).
        progress: Show a tqdm bar (``logging.progress``).
        total_steps: Steps of the run (the bar's length).
        start_step: Steps already taken (resume): later lines of the JSONL are dropped.
        tracker: ``(Trackers, series)``: also send each step to W&B / MLflow
            (:mod:`~megatron_scir.training.trackers`; a step they have is not sent twice).
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        enabled: bool,
        tensorboard: bool,
        progress: bool,
        total_steps: int,
        start_step: int = 0,
        tracker: tuple[Any, str] | None = None,
    ) -> None:
        self.enabled = enabled
        self._tracker = tracker if enabled else None
        self._writer = self._bar = self._file = None
        if not enabled:
            return
        self.path = Path(log_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        if self._tracker is not None:  # the steps kept here that a tracker may lack
            trackers, series = self._tracker
            trackers.catch_up(series, read_jsonl(self.path) if self.path.exists() else [])
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 — closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(log_dir) / "tensorboard"), purge_step=start_step)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Append step ``step``'s values (numbers; non-finite ones as ``NaN``/``Infinity``)."""
        if not self.enabled:
            return
        self._file.write(_line({STEP: step, **values}))
        self._file.flush()
        if self._tracker is not None:
            trackers, series = self._tracker
            trackers.log(series, step, values)
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(key, value, step)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix({k: f"{values[k]:.4g}" for k in _BAR_KEYS if k in values})

    def close(self) -> None:
        for handle in (self._bar, self._writer, self._file):
            if handle is not None:
                handle.close()


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of steps ≤ ``step`` (a resumed run redoes the later ones)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)[STEP] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a torn last line of a killed writer
    with atomic_open(path) as fh:
        fh.write("".join(line + "\n" for line in kept).encode("utf-8"))


# --------------------------------------------------------------------------------------------
# whole JSONL files


def _jsonable(value: Any) -> Any:
    """``json.dumps``'s ``default``: numpy/torch scalars through ``.item()``, paths as text."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _line(record: Mapping[str, Any]) -> str:
    """One record as a line (the module's one line format, NaN as ``NaN``)."""
    return json.dumps(dict(record), sort_keys=True, allow_nan=True, default=_jsonable) + "\n"


def write_jsonl(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> None:
    """Write ``records`` as a whole new JSONL file, atomically, one line per record (see the
    module docstring for the format; a rerun rewrites the file instead of appending duplicates).
    """
    with atomic_open(path) as fh:
        for record in records:
            fh.write(_line(record).encode("utf-8"))


def _parse_line(raw: bytes) -> dict[str, Any] | None:
    """A line as a JSON object, or ``None`` if it is not one."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a JSONL file of records (``NaN``/``Infinity`` tokens come back as floats).

    Blank lines are skipped. A last line that is not a JSON object is a write torn by a crash:
    it is skipped with a warning.

    Args:
        path: the file.

    Returns:
        The records, in file order.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line other than the last is not a JSON object; the message names
            ``file:line``.
    """
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    out = []
    for index, raw in enumerate(lines):
        if not raw.strip():
            continue
        record = _parse_line(raw)
        if record is None:
            if index == last:
                logger.warning("%s:%d: skipping a torn last line", path, index + 1)
                break
            preview = raw[:80].decode("utf-8", errors="replace")
            raise ValueError(f"{path}:{index + 1}: not a JSON object: {preview!r}")
        out.append(record)
    return out
