"""Reading input records with row-by-row validation, and atomic JSONL writing.

Any source of :mod:`megatron_scir.data.sources` (JSONL, JSON, Parquet, a ``save_to_disk``
folder, a Hub dataset); every row is first renamed by ``data.columns`` and turned from its shape
into this project's fields (:mod:`megatron_scir.data.shapes`), then checked as below.

Every line is checked (UTF-8, JSON, an object, the kind's fields and types, non-empty texts,
unique ids). With ``on_bad_record="error"`` the first bad line raises a :class:`RecordError`
naming ``file:line`` and the problem; with ``"skip"`` bad lines are skipped, counted by problem
and summarised once at the end. Blank lines are ignored. Append-with-commit streams
(:mod:`megatron_scir.data.stream`) are read transparently: only committed chunks count.

A pair whose two responses are the same text (after stripping outer whitespace) is dropped and
counted under either policy: no reward can prefer one of them, and kept it would score ½.
An input file (every kind but ``generations``, which a resumable run starts empty) with no
record left is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from megatron_scir.config.choices import OnBadRecord
from megatron_scir.data.errors import DataError, RecordError
from megatron_scir.data.records import (
    ID_FIELDS,
    PARSERS,
    RECORD_KINDS,
    PairRecord,
    Record,
    RecordProblem,
    record_to_json,
)
from megatron_scir.data.shapes import (
    EXPECTED,
    NATIVE,
    check_columns,
    parse_columns,
    rename,
    to_native,
)
from megatron_scir.data.sources import describe_missing, iter_rows, parse_source, row_unit
from megatron_scir.data.stream import StreamScan, atomic_open, encode_json_line, is_stream

logger = logging.getLogger(__name__)

_MAX_EXAMPLES = 5
_SKIP_HINT = "set data.on_bad_record=skip to skip and count bad lines"


@dataclass
class ReadReport:
    """What reading one file found.

    Attributes:
        path: The file read.
        kind: The record kind (``prompts``, ``sft``, ``judge``, ``generations``, ``pairs``).
        num_records: Records returned.
        num_skipped: Lines (or, for a corrupt stream chunk, records) skipped as bad.
        problems: Skipped lines counted by problem kind (``"missing field"``, ...).
        examples: The first few skipped lines' messages (``file:line: problem: detail``).
        num_uncommitted_lines: Stream lines after the last commit (an interrupted writer).
        num_identical: Pairs dropped because their two responses are the same text.
        shapes: Records read by shape (``native``, ``messages``, ``preference``).
    """

    path: str
    kind: str
    num_records: int = 0
    num_skipped: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    num_uncommitted_lines: int = 0
    num_identical: int = 0
    shapes: Counter = field(default_factory=Counter)

    def skip(self, error: RecordError, count: int = 1) -> None:
        """Count a skipped bad line (or ``count`` records of a corrupt chunk)."""
        self.num_skipped += count
        self.problems[error.problem] += count
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(str(error))

    def summary(self) -> str:
        """One line for logs: records read, skips by problem, first skipped lines."""
        text = f"{self.path}: {self.num_records} {self.kind} records"
        if set(self.shapes) - {NATIVE}:
            text += " (" + ", ".join(f"{n} {s}" for s, n in self.shapes.most_common()) + " rows)"
        if self.num_skipped:
            kinds = ", ".join(f"{n} {kind}" for kind, n in self.problems.most_common())
            text += f", {self.num_skipped} skipped ({kinds}); first: " + " | ".join(self.examples)
        if self.num_uncommitted_lines:
            text += f", {self.num_uncommitted_lines} uncommitted stream line(s) ignored"
        if self.num_identical:
            text += f", {self.num_identical} pair(s) with identical responses dropped"
        return text


def read_records(
    path: str | os.PathLike,
    kind: str,
    *,
    on_bad_record: str = "error",
    columns: Sequence[str] = (),
    keep: range | None = None,
    judge_scores: int | None = None,
) -> tuple[list[Record], ReadReport]:
    """Read and validate every row of a source of ``kind`` records.

    Args:
        path: The source (:mod:`~megatron_scir.data.sources`): a JSONL file (plain, or an
            append-with-commit stream), a JSON or Parquet file, a ``save_to_disk`` folder
            (``DIR[:SPLIT]``) or ``hf:NAME[:CONFIG]:SPLIT``.
        kind: One of ``prompts``, ``sft``, ``judge``, ``generations``, ``pairs``.
        on_bad_record: ``error`` (raise at the first bad line) or ``skip`` (count and go on).
        columns: ``data.columns`` (``FIELD=COLUMN`` renames).
        keep: Return only the records at these positions (0-based, among the valid records);
            every row is still checked and counted (``report.num_records``). A slice of a large
            pool without holding the pool.
        judge_scores: K of a pointwise judge (scores 0..K): preference rows read as ``judge``
            records give two pointwise records (chosen K, rejected 0) instead of one pairwise
            verdict (None: pairwise).

    Returns:
        The records in file order (each with ``where = "path:line"``) and the report.

    Raises:
        RecordError: a bad line under ``error`` (message ``path:line: problem: detail``).
        DataError: a missing file, an unknown kind / policy, or an input file (any kind but
            ``generations``) with no record left.
    """
    if kind not in PARSERS:
        raise DataError(f"unknown record kind {kind!r}; expected one of {', '.join(RECORD_KINDS)}")
    if on_bad_record not in ("error", "skip"):
        raise DataError(f"data.on_bad_record={on_bad_record!r}: expected error or skip")
    source = parse_source(path)
    missing = describe_missing(source, f"a JSONL file of {kind} records")
    if missing:
        raise DataError(missing)
    report = ReadReport(source.spec, kind)
    mapping = parse_columns(columns)
    if source.form == "jsonl":
        rows = _jsonl_rows(source.path, on_bad_record, report)
    else:
        rows = iter_rows(source)
    valid = _iter_valid(rows, source, kind, on_bad_record, report, mapping, judge_scores)
    if keep is None:
        records = list(valid)
        report.num_records = len(records)
    else:
        records, report.num_records = [], 0
        for index, record in enumerate(valid):
            if index in keep:
                records.append(record)
            report.num_records += 1
    if not report.num_records and kind in INPUT_KINDS:
        raise DataError(_nothing_read(report))
    if report.num_skipped or report.num_uncommitted_lines or report.num_identical:
        logger.warning("%s", report.summary())
    elif set(report.shapes) - {NATIVE}:  # what the rows were read as (the CLI shows INFO here)
        logger.info("%s", report.summary())
    return records, report


INPUT_KINDS = ("prompts", "sft", "judge", "pairs")
"""Kinds read as a command's or a stage's input: refused when no record is left in the file."""


def _nothing_read(report: ReadReport) -> str:
    """The one-line error for an input file with no usable record."""
    dropped = []
    if report.num_skipped:
        kinds = ", ".join(f"{n} {kind}" for kind, n in report.problems.most_common())
        dropped.append(f"{report.num_skipped} line(s) skipped as bad ({kinds})")
    if report.num_identical:
        dropped.append(f"{report.num_identical} pair(s) with identical responses dropped")
    if report.num_uncommitted_lines:
        dropped.append(f"{report.num_uncommitted_lines} uncommitted stream line(s)")
    why = "; ".join(dropped) if dropped else "the file is empty"
    return (
        f"{report.path}: no {report.kind} records ({why}): expected one JSON object per line"
    )


def _jsonl_rows(path: Path, policy: str, report: ReadReport) -> Iterator[tuple[int, Any]]:
    """``(line number, decoded object | RecordProblem | None)`` of a JSONL file or stream."""
    hint = _SKIP_HINT if policy == OnBadRecord.ERROR else ""
    with open(path, "rb") as fh:
        scan = StreamScan(str(path)) if is_stream(fh.readline()) else None
        fh.seek(0)
        for number, line in scan.lines(fh) if scan else enumerate(fh, start=1):
            if line is None:  # a stream chunk that fails its commit marker's checks
                _, detail, num_lines = scan.corrupt[-1]
                error = RecordError(str(path), number, "corrupt chunk", detail, hint)
                if policy == OnBadRecord.ERROR:
                    raise error
                report.skip(error, count=num_lines)
                continue
            try:
                yield number, _decode_line(line, number)
            except RecordProblem as problem:
                yield number, problem
        if scan is not None:
            report.num_uncommitted_lines = scan.num_uncommitted_lines


def _iter_valid(
    rows,
    source,
    kind: str,
    policy: str,
    report: ReadReport,
    mapping: dict[str, str],
    judge_scores: int | None,
) -> Iterator[Record]:
    parse, id_field = PARSERS[kind], ID_FIELDS[kind]
    hint = _SKIP_HINT if policy == OnBadRecord.ERROR else ""
    unit = row_unit(source)
    seen: dict[str, int] = {}
    checked = not mapping
    for number, obj in rows:
        try:
            if isinstance(obj, RecordProblem):
                raise obj
            if obj is None:  # a blank line
                continue
            if not isinstance(obj, dict):
                raise RecordProblem(
                    "not an object", f"expected a JSON object, got {type(obj).__name__}"
                )
            if not checked:
                check_columns(mapping, obj, source.spec)
                checked = True
            shape, objs = to_native(rename(obj, mapping), kind, number, judge_scores=judge_scores)
            place = number if unit == "line" else f"{unit} {number}"
            where = f"{source.spec}:{place}"
            records = [parse(obj, where) for obj in objs]
            record = records[0]
            if id_field is not None:
                _check_unique(getattr(record, id_field), id_field, number, seen, unit)
            if isinstance(record, PairRecord) and _identical(record):
                report.num_identical += 1
                continue
        except RecordProblem as problem:
            detail = problem.detail
            if problem.kind in ("missing field", "wrong shape") and kind in EXPECTED:
                detail += f" (rows of {kind}: {EXPECTED[kind]})"
            error = RecordError(source.spec, number, problem.kind, detail, hint, unit=unit)
            if policy == OnBadRecord.ERROR:
                raise error from None
            report.skip(error)
            continue
        report.shapes[shape] += 1
        yield from records


def _decode_line(line: bytes, number: int) -> Any:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RecordProblem(
            "non-UTF-8", f"invalid UTF-8 byte 0x{line[err.start]:02x} at byte {err.start + 1}"
        ) from None
    if number == 1:
        text = text.removeprefix("\ufeff")
    if not text.strip():
        return None
    try:
        return json.loads(text.rstrip("\r\n"), parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise RecordProblem("malformed JSON", f"{err.msg} at column {err.colno}") from None
    except ValueError as err:
        raise RecordProblem("malformed JSON", str(err)) from None


def _identical(pair: PairRecord) -> bool:
    """Whether a pair's two responses are the same text (as pair building compares them)."""
    return pair.response_1.strip() == pair.response_2.strip()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_unique(
    value: str, name: str, number: int, seen: dict[str, int], unit: str = "line"
) -> None:
    first = seen.setdefault(value, number)
    if first != number:
        raise RecordProblem(
            "duplicate id", f"duplicate {name} {value!r} (first at {unit} {first})"
        )


def write_records(path: str | os.PathLike, records: Iterable[Record | Mapping[str, Any]]) -> int:
    """Write records (or plain JSON objects) as JSONL atomically; returns the number written."""
    count = 0
    with atomic_open(path) as fh:
        for record in records:
            obj = record if isinstance(record, Mapping) else record_to_json(record)
            fh.write(encode_json_line(obj))
            count += 1
    return count
