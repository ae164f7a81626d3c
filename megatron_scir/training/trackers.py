"""Weights & Biases and MLflow, next to ``metrics.jsonl`` and TensorBoard (global rank 0 only).

One tracker run per run directory (``checkpoint.save`` of ``scir sft`` / ``scir train``,
``iteration.run_dir`` of ``scir iterate``). Its ids live in ``<run dir>/trackers.json`` with, per
series, the last step the trackers received: a resumed, requeued or rerun job continues the same
runs and never sends a step twice (a step redone after a kill is skipped: it was sent before the
kill, or it is sent now for the first time).

Series: ``scir sft`` / ``scir train`` log their step metrics as they are (``loss/total``,
``train/lr``, step = optimizer step); ``scir iterate`` prefixes each training stage's series
(``iter_1/train/loss/total``, ``iter_0/sft/...``, each with its own ``…/step`` axis) and logs the
iteration records under ``iteration/`` (step = t) with the iteration plot as an artifact. The
resolved config is the runs' parameters (flattened ``section.key``).

``logging.wandb=true`` needs ``pip install -e .[wandb]`` (``WANDB_MODE=offline`` works without an
account), ``logging.mlflow=true`` ``pip install -e .[mlflow]``; asking for one whose package is
missing fails at start-up naming the extra (:func:`check_trackers`).
"""

from __future__ import annotations

import importlib.util
import json
import math
import secrets
import struct
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from megatron_scir.config import Config, ConfigError
from megatron_scir.config.outputs import flat_config
from megatron_scir.data.stream import atomic_open

TRACKERS_FILE = "trackers.json"
_PACKAGES = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def check_trackers(cfg: Config) -> None:
    """Refuse, before any work, a tracker whose package is not installed (naming the extra)."""
    for key, (module, extra) in _PACKAGES.items():
        if getattr(cfg.logging, key) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"logging.{key}=true needs the {module} package: pip install -e .[{extra}] "
                f"(or set logging.{key}=false)"
            )


def wanted(cfg: Config) -> bool:
    return bool(cfg.logging.wandb or cfg.logging.mlflow)


class Trackers:
    """The W&B and/or MLflow runs of one run directory (open on global rank 0 only).

    Each tool has its own mark per series (the last step it holds), read back from the tool when
    a process first logs the series: MLflow's metric history (its writes are synchronous), and
    in offline mode W&B's own offline files (W&B writes through a service process that a SIGKILL
    takes down with what it had not written yet). The series are caught up from
    ``metrics.jsonl`` (:meth:`catch_up`), so a kill at any moment leaves neither a gap nor a
    step twice. Online, W&B itself drops a step lower than the resumed run's.

    Args:
        run_dir: Where ``trackers.json`` (and W&B's offline files) go.
        cfg: The run config (``logging.*``; the whole config is logged as parameters).
        name: The runs' display name (default ``logging.run_name`` or the folder's name).
    """

    def __init__(self, run_dir: str | Path, cfg: Config, *, name: str | None = None) -> None:
        check_trackers(cfg)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / TRACKERS_FILE
        self.state: dict[str, Any] = (
            json.loads(self.path.read_text()) if self.path.is_file() else {}
        )
        self.state.setdefault("marks", {})
        self.state.setdefault("wandb_step", 0)
        name = name or cfg.logging.run_name or self.run_dir.resolve().name
        params = {k: _param(v) for k, v in flat_config(cfg).items()}
        self._wandb = self._mlflow = None
        self._axes: set[str] = set()
        self._mlflow_read: set[str] = set()
        if cfg.logging.wandb:
            self._open_wandb(cfg, name, params)
        if cfg.logging.mlflow:
            self._open_mlflow(cfg, name, params)
        self._save()

    def _open_wandb(self, cfg: Config, name: str, params: dict) -> None:
        import wandb  # lazy: optional

        run_id = self.state.get("wandb_id") or secrets.token_hex(4)
        self._wandb = wandb.init(
            project=cfg.logging.wandb_project,
            entity=cfg.logging.wandb_entity,
            name=name,
            id=run_id,
            resume="allow",
            dir=str(self.run_dir),
            config=params,
            reinit="create_new",
        )
        self.state["wandb_id"] = self._wandb.id
        if self._wandb.settings.mode == "offline":  # what W&B wrote before, not what it was sent
            marks, last = wandb_offline_marks(self.run_dir, self._wandb.id)
            self.state["marks"]["wandb"] = marks
            self.state["wandb_step"] = last

    def _open_mlflow(self, cfg: Config, name: str, params: dict) -> None:
        from mlflow import MlflowClient  # lazy: optional
        from mlflow.entities import Param

        client = MlflowClient(tracking_uri=cfg.logging.mlflow_tracking_uri)
        run_id = self.state.get("mlflow_run_id")
        if run_id is None:
            experiment = client.get_experiment_by_name(cfg.logging.mlflow_experiment)
            experiment_id = (
                experiment.experiment_id
                if experiment is not None
                else client.create_experiment(cfg.logging.mlflow_experiment)
            )
            run_id = client.create_run(experiment_id, run_name=name).info.run_id
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for start in range(0, len(items), 100):  # MLflow's batch limit
                client.log_batch(run_id, params=items[start : start + 100])
            self.state["mlflow_run_id"] = run_id
        self._mlflow = (client, run_id)

    @property
    def run_ids(self) -> dict[str, str]:
        return {k: self.state[k] for k in ("wandb_id", "mlflow_run_id") if k in self.state}

    def _mark(self, tool: str, series: str) -> int:
        return self.state["marks"].get(tool, {}).get(series, -1)

    def catch_up(self, series: str, records: Iterable[Mapping[str, Any]]) -> None:
        """Send the steps of ``records`` (a series' ``metrics.jsonl`` lines) a tool lacks."""
        for record in records:
            self.log(series, int(record["step"]), record)

    def log(self, series: str, step: int, values: Mapping[str, Any]) -> None:
        """Send ``values`` of ``series`` at ``step`` to each tool that lacks that step."""
        prefix = f"{series}/" if series else ""
        numbers = {
            f"{prefix}{k}": float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "step"
        }
        if self._wandb is not None and step > self._mark("wandb", series):
            if series and series not in self._axes:
                self._wandb.define_metric(f"{prefix}step")
                self._wandb.define_metric(f"{prefix}*", step_metric=f"{prefix}step")
                self._axes.add(series)
            payload = dict(numbers)
            if series:  # W&B's own step counts every point; the chart axis is the series' step
                payload[f"{prefix}step"] = step
                self.state["wandb_step"] += 1
            else:
                self.state["wandb_step"] = max(self.state["wandb_step"], step)
            self._wandb.log(payload, step=self.state["wandb_step"])
            self.state["marks"].setdefault("wandb", {})[series] = step
        if self._mlflow is not None and numbers and series not in self._mlflow_read:
            self._read_mlflow_mark(series, next(iter(numbers)))
        if self._mlflow is not None and step > self._mark("mlflow", series):
            from mlflow.entities import Metric  # lazy: optional

            client, run_id = self._mlflow
            stamp = int(time.time() * 1000)
            metrics = [Metric(k, v, stamp, step) for k, v in numbers.items()]
            for start in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[start : start + 1000])
            self.state["marks"].setdefault("mlflow", {})[series] = step
        self._save()

    def _read_mlflow_mark(self, series: str, key: str) -> None:
        """The series' mark as MLflow holds it (a kill between its write and ours leaves
        ``trackers.json`` one step behind)."""
        client, run_id = self._mlflow
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        self.state["marks"].setdefault("mlflow", {})[series] = max(steps, default=-1)
        self._mlflow_read.add(series)

    def artifact(self, path: str | Path) -> None:
        """Attach a file (the iteration plot) to the runs."""
        if self._wandb is not None:
            self._wandb.save(str(path), base_path=str(Path(path).parent), policy="now")
        if self._mlflow is not None:
            client, run_id = self._mlflow
            client.log_artifact(run_id, str(path))

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
        if self._mlflow is not None:
            client, run_id = self._mlflow
            client.set_terminated(run_id)
            self._mlflow = None

    def _save(self) -> None:
        with atomic_open(self.path) as fh:
            fh.write(json.dumps(self.state, indent=1, sort_keys=True).encode("utf-8"))


def wandb_offline_records(path: str | Path) -> Iterator[Any]:
    """The records of a W&B offline ``.wandb`` file, as W&B's own protobuf ``Record``s.

    The file is W&B's transaction log: a 7-byte header (``:W&B``, magic, version), then 32 KiB
    blocks of records, each ``crc32 (4) | length (2) | type (1) | data``, a record split over
    blocks as first / middle / last parts; a block's tail under 7 bytes is padding. A file
    cut by a kill ends early: what was written before reads.
    """
    from wandb.proto import wandb_internal_pb2  # lazy: optional

    data, pos, block, pending = Path(path).read_bytes(), 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 or pos + 7 + length > len(data):
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def wandb_offline_history(run_dir: str | Path, run_id: str) -> list[dict[str, Any]]:
    """Every history row W&B wrote offline for ``run_id`` under ``run_dir``, over all its
    offline folders (one per start of the run), in order."""
    rows = []
    folders = sorted(Path(run_dir).glob(f"wandb/offline-run-*-{run_id}"))
    for path in (folder / f"run-{run_id}.wandb" for folder in folders):
        if not path.is_file():
            continue
        for record in wandb_offline_records(path):
            if record.WhichOneof("record_type") == "history":
                rows.append(
                    {
                        (i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                        for i in record.history.item
                    }
                )
    return rows


def wandb_offline_marks(run_dir: str | Path, run_id: str) -> tuple[dict[str, int], int]:
    """Per series the last step W&B wrote offline (a prefixed series by its ``<series>/step``,
    the unprefixed one, ``""``, by ``_step``), and the last ``_step``."""
    marks: dict[str, int] = {}
    last = 0
    for row in wandb_offline_history(run_dir, run_id):
        step = int(row.get("_step", 0))
        last = max(last, step)
        axes = {k[: -len("/step")]: int(v) for k, v in row.items() if k.endswith("/step")}
        if not axes and any(not k.startswith("_") for k in row):
            axes = {"": step}
        for series, value in axes.items():
            marks[series] = max(marks.get(series, -1), value)
    return marks, last


def _param(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value if isinstance(value, str) else json.dumps(value)
