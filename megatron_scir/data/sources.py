"""Where input records come from: a local file, a ``save_to_disk`` folder, or a Hub dataset.

One syntax for every data input (``data.prompts``, ``data.seed_sft``, ``data.seed_judge``,
``iteration.eval_prompts``, ``iteration.eval_pairs``, ``--pairs``, ``--prompts``):

===================================  ======================================================
``rows.jsonl``                       JSON Lines (also this project's append-with-commit
                                     streams); read line by line by :mod:`.jsonl`
``rows.json``                        a JSON array of objects (or JSON Lines in a .json file)
``rows.parquet``                     Apache Parquet (``pyarrow``: the ``data`` extra)
``DIR`` / ``DIR:SPLIT``              a folder written by ``datasets``' ``save_to_disk``
                                     (a ``DatasetDict`` folder needs its split)
``hf:NAME:SPLIT``                    ``datasets.load_dataset(NAME, split=SPLIT)``: a Hub id
``hf:NAME:CONFIG:SPLIT``             or a local dataset folder, with a config name
===================================  ======================================================

Rows come back as plain dicts with their place (``file:row N``); :mod:`.jsonl` checks them as it
checks JSONL lines. Nothing here imports ``datasets`` or ``pyarrow`` until a source needs it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_scir.data.errors import DataError
from megatron_scir.data.records import RecordProblem

HUB_PREFIX = "hf:"
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
_EXTRA = "pip install -e .[data]"


@dataclass(frozen=True)
class Source:
    """A parsed data source (see the module docstring for the syntax)."""

    spec: str
    """As written in the config or on the command line."""
    form: str
    """``jsonl``, ``json``, ``parquet``, ``disk`` or ``hub``."""
    path: Path | None = None
    """The file or folder (``jsonl``, ``json``, ``parquet``, ``disk``)."""
    name: str | None = None
    """The dataset id or folder given to ``load_dataset`` (``hub``)."""
    config: str | None = None
    split: str | None = None

    @property
    def is_file(self) -> bool:
        return self.form in ("jsonl", "json", "parquet")


def parse_source(spec: str | os.PathLike) -> Source:
    """The source ``spec`` names (its syntax is checked; whether it exists is not)."""
    text = os.fspath(spec)
    if text.startswith(HUB_PREFIX):
        parts = text[len(HUB_PREFIX) :].split(":")
        if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
            raise DataError(
                f"{text}: a Hub dataset is hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT "
                "(e.g. hf:HuggingFaceH4/ultrafeedback_binarized:train_prefs)"
            )
        name, *config, split = parts
        return Source(text, "hub", name=name, config=config[0] if config else None, split=split)
    path = Path(text)
    if path.suffix in FILE_SUFFIXES or path.is_file():
        form = path.suffix[1:] if path.suffix in FILE_SUFFIXES else "jsonl"
        return Source(text, form, path=path)
    folder, sep, split = text.rpartition(":")
    if sep and split and not path.exists() and Path(folder).is_dir():
        return Source(text, "disk", path=Path(folder), split=split)
    return Source(text, "disk", path=path)


def describe_missing(source: Source, what: str) -> str | None:
    """The one-line problem when a local source is not there (None when it is, or for hub)."""
    if source.form == "hub":
        return None
    if source.is_file and not source.path.is_file():
        return f"{source.spec} does not exist (expected {what})"
    if source.form == "disk" and not source.path.is_dir():
        return (
            f"{source.spec} does not exist (expected {what}: a .jsonl, .json or .parquet file, "
            "a datasets save_to_disk folder, or hf:NAME:SPLIT)"
        )
    return None


def iter_rows(source: Source) -> Iterator[tuple[int, Any]]:
    """``(row number from 1, row)`` of a non-JSONL source; a row is a dict when well formed."""
    if source.form == "json":
        yield from _json_rows(source.path)
    elif source.form == "parquet":
        yield from _parquet_rows(source.path)
    else:
        yield from enumerate(_load_dataset(source), start=1)


def row_unit(source: Source) -> str:
    """How a place in ``source`` is named: ``line`` (JSON Lines), ``item`` or ``row``."""
    return {"jsonl": "line", "json": "item"}.get(source.form, "row")


def _json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        if error.pos == 0 or not text.lstrip().startswith("{"):
            raise DataError(
                f"{path}: not valid JSON ({error.msg} at line {error.lineno})"
            ) from None
        data = None  # JSON Lines in a .json file
    if data is None:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                yield number, RecordProblem("malformed JSON", f"{err.msg} at column {err.colno}")
        return
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}, {"train": [...]}
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects, got {type(data).__name__}")
    yield from enumerate(data, start=1)


def _parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow as pa  # lazy: optional
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow ({_EXTRA})") from None
    try:
        reader = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid/OSError subclasses
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    number = 0
    for batch in reader.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            number += 1
            yield number, row
    del reader
    pa.default_memory_pool().release_unused()  # the batches' buffers, kept by Arrow's allocator


def _load_dataset(source: Source):
    try:
        import datasets  # lazy: optional
    except ImportError:
        raise DataError(
            f"{source.spec}: reading it needs the datasets package ({_EXTRA})"
        ) from None
    try:
        if source.form == "hub":
            return datasets.load_dataset(source.name, source.config, split=source.split)
        loaded = datasets.load_from_disk(str(source.path))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{source.spec}: cannot be loaded as a dataset ({error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = ", ".join(loaded)
        if source.split is None:
            raise DataError(
                f"{source.spec} holds the splits {splits}: name one as {source.spec}:SPLIT"
            )
        if source.split not in loaded:
            raise DataError(f"{source.spec}: no split {source.split!r} (it holds {splits})")
        return loaded[source.split]
    if source.split is not None:
        raise DataError(f"{source.path} holds one dataset, not splits: drop :{source.split}")
    return loaded


def source_fingerprint(spec: str | os.PathLike) -> str | None:
    """What identifies a Hub dataset's content (its ``datasets`` fingerprint); None for local
    sources (their files are hashed like any file)."""
    source = parse_source(spec)
    if source.form != "hub":
        return None
    return f"datasets:{_load_dataset(source)._fingerprint}"
