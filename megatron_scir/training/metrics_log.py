"""Per-step metrics to JSONL and TensorBoard, and a progress bar, on global rank 0.

``<log_dir>/metrics.jsonl`` holds one JSON object per optimizer step (``{"step": n, ...}``);
TensorBoard event files go to ``<log_dir>/tensorboard``. A resumed run first cuts the JSONL back
to the steps its checkpoint covers, so the file never holds a step twice or misses one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from megatron_scir.data.stream import atomic_open

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    """Writes step metrics (rank 0 only: every other rank gets a disabled log).

    Args:
        log_dir: Directory of ``metrics.jsonl`` and ``tensorboard/``.
        enabled: False on every rank but global rank 0.
        tensorboard: Also write TensorBoard events (``logging.tensorboard``).
        progress: Show a tqdm bar (``logging.progress``).
        total_steps: Steps of the run (the bar's length).
        start_step: Steps already taken (resume): later lines of the JSONL are dropped.
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
    ) -> None:
        self.enabled = enabled
        self._writer = self._bar = self._file = None
        if not enabled:
            return
        self.path = Path(log_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _truncate_after(self.path, start_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 — closed in close()
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(Path(log_dir) / "tensorboard"), purge_step=start_step)
        if progress:
            from tqdm import tqdm

            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def log(self, step: int, values: dict[str, Any]) -> None:
        """Append step ``step``'s values (numbers; non-finite ones are written as strings)."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _jsonable(v) for k, v in values.items()}}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, int | float):
                    self._writer.add_scalar(key, value, step)
        if self._bar is not None:
            self._bar.update(1)
            shown = {k: values[k] for k in ("loss/total", "lr") if k in values}
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})

    def close(self) -> None:
        for handle in (self._bar, self._writer, self._file):
            if handle is not None:
                handle.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _truncate_after(path: Path, step: int) -> None:
    """Keep the lines of steps ≤ ``step`` (a resumed run redoes the later ones)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a torn last line of a killed writer
    with atomic_open(path) as fh:
        fh.write("".join(line + "\n" for line in kept).encode("utf-8"))
