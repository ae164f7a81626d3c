"""Append-with-commit JSONL streams: resumable outputs whose readers see whole chunks only.

Layout of a stream file (every line is a JSON object)::

    {"__scir_jsonl_stream__": 1}                                   <- header, created atomically
    {...record...}                                                  \\
    {...record...}                                                   } chunk 0
    {"__commit__": {"chunk": 0, "records": 2, "crc32": 91..., "meta": {...}}}   <- commit marker
    {...record...}                                                  <- chunk 1 ...

A chunk and its commit marker are appended with one ``write`` and fsynced. A SIGKILL at any
moment leaves the committed chunks followed by at most a prefix of one more chunk (possibly a
partial line); a reader returns committed records only, and a writer reopening the file truncates
that uncommitted tail before appending. The marker's record count and CRC-32 of the chunk's
bytes reject anything else (a chunk edited or damaged later) as a corrupt chunk.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from megatron_scir.data.errors import DataError, RecordError

logger = logging.getLogger(__name__)

STREAM_HEADER = b'{"__scir_jsonl_stream__": 1}\n'
_HEADER_PREFIX = b'{"__scir_jsonl_stream__"'
_COMMIT_PREFIX = b'{"__commit__"'


def is_stream(first_line: bytes) -> bool:
    """Whether a file whose first line is ``first_line`` is an append-with-commit stream."""
    return first_line.startswith(_HEADER_PREFIX)


def encode_json_line(obj: Mapping[str, Any]) -> bytes:
    """One JSONL line (UTF-8, non-ASCII kept readable, NaN/Infinity refused)."""
    return (json.dumps(obj, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


@dataclass
class StreamScan:
    """What scanning a stream found; filled while :meth:`lines` is consumed.

    Attributes:
        committed_end: Byte offset right after the last valid commit marker (or the header).
        num_chunks: Committed chunks seen.
        metas: The ``meta`` object of each committed chunk, in order.
        num_uncommitted_lines: Lines after the last commit (an interrupted writer's tail).
        corrupt: ``(line, detail, num_lines)`` of every commit marker that failed its checks;
            its chunk's lines are not yielded.
    """

    path: str
    committed_end: int = 0
    num_chunks: int = 0
    metas: list[dict] = field(default_factory=list)
    num_uncommitted_lines: int = 0
    corrupt: list[tuple[int, str, int]] = field(default_factory=list)

    def lines(self, fh: BinaryIO) -> Iterator[tuple[int, bytes | None]]:
        """Yield ``(line_number, line)`` of committed records; ``fh`` is positioned at 0.

        A corrupt chunk yields ``(marker_line_number, None)`` instead of its lines.
        """
        header = fh.readline()
        if not is_stream(header) or not header.endswith(b"\n"):
            raise DataError(f"{self.path}:1: not an append-with-commit stream (bad header)")
        self.committed_end = offset = len(header)
        pending: list[tuple[int, bytes]] = []
        crc, number = 0, 1
        for line in fh:
            number += 1
            offset += len(line)
            if not line.startswith(_COMMIT_PREFIX) or not line.endswith(b"\n"):
                pending.append((number, line))
                crc = zlib.crc32(line, crc)
                continue
            problem = self._check_marker(line, len(pending), crc)
            if problem:
                # Reported in place (line None) so a reader can stop or skip right here.
                self.corrupt.append((number, problem, len(pending)))
                yield number, None
            else:
                yield from pending
            pending, crc = [], 0
            self.committed_end = offset
        self.num_uncommitted_lines = len(pending)

    def _check_marker(self, line: bytes, num_lines: int, crc: int) -> str:
        try:
            commit = json.loads(line)["__commit__"]
            chunk, records, want_crc = commit["chunk"], commit["records"], commit["crc32"]
        except (ValueError, KeyError, TypeError) as err:
            return f"unreadable commit marker ({err})"
        if chunk != self.num_chunks:
            return f"commit marker of chunk {chunk} where chunk {self.num_chunks} was expected"
        self.num_chunks += 1  # counted even when damaged, so later chunks stay in sequence
        if records != num_lines or want_crc != crc:
            return (
                f"chunk {chunk} does not match its commit marker ({num_lines} lines, "
                f"crc32 {crc}; marker says {records} records, crc32 {want_crc})"
            )
        self.metas.append(commit.get("meta") or {})
        return ""


class ChunkedJsonlWriter:
    """Appends chunks of records to a stream file; a chunk is visible only once committed.

    Reopening an existing stream resumes it: the uncommitted tail of an interrupted writer is cut
    off, and ``num_chunks`` / ``chunk_metas`` say what is already there (a generation run uses
    them to skip the prompts it has done). One writer per file (an exclusive ``flock``).

    Args:
        path: The stream file; created (header only, atomically) when missing.
        fsync: fsync after every commit (keep on; off only for throw-away benchmarks).
    """

    def __init__(self, path: str | os.PathLike, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self._fsync = fsync
        if not self.path.exists():
            _create_atomically(self.path, STREAM_HEADER)
        self._fh = open(self.path, "r+b")  # noqa: SIM115 -- held open across commits
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._fh.close()
            raise DataError(f"another process is writing {self.path}") from None
        scan = StreamScan(str(self.path))
        self.num_records = sum(1 for _ in scan.lines(self._fh))
        if scan.corrupt:
            self._fh.close()
            line, detail, _ = scan.corrupt[0]
            raise RecordError(
                str(self.path),
                line,
                "corrupt chunk",
                detail,
                "refusing to append to a damaged stream; move it away to restart",
            )
        if scan.num_uncommitted_lines:
            logger.warning(
                "%s: dropping %d uncommitted line(s) of an interrupted writer",
                self.path,
                scan.num_uncommitted_lines,
            )
        self._fh.truncate(scan.committed_end)
        self._fh.seek(scan.committed_end)
        self.num_chunks = scan.num_chunks
        self.chunk_metas: list[dict] = scan.metas

    def commit(
        self, records: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
    ) -> None:
        """Append ``records`` and their commit marker as one chunk, then flush and fsync.

        Args:
            records: JSON objects (use :func:`megatron_scir.data.records.record_to_json`).
            meta: A small JSON object stored in the marker (e.g. which prompts the chunk covers).
        """
        body = b"".join(encode_json_line(r) for r in records)
        marker = {
            "chunk": self.num_chunks,
            "records": len(records),
            "crc32": zlib.crc32(body),
            "meta": dict(meta or {}),
        }
        self._fh.write(body + encode_json_line({"__commit__": marker}))
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())
        self.num_chunks += 1
        self.num_records += len(records)
        self.chunk_metas.append(marker["meta"])

    def close(self) -> None:
        """Release the file (committed chunks are already durable)."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> ChunkedJsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def atomic_open(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for writing under a temporary name; rename into place on success.

    A reader sees the old file or the complete new one, never a partial file. On an exception
    the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def _create_atomically(path: Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
