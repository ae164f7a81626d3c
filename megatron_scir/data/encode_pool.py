"""Encoding many records with worker processes (setup-time tokenisation of a DataModule).

Tokenisation is CPU-bound Python around the tokenizer library, so worker processes (forked,
each with its own copy of the encoder) scale it with the cores. Results come back in input
order, so the outcome is identical for any number of workers. The workers exit with the process
that started them (:func:`~megatron_scir.parallel.child_processes.exit_with_parent`): a rank
killed while encoding leaves none behind.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from typing import Any

from megatron_scir.data.encode import SequenceEncoder, TruncationStats
from megatron_scir.parallel.child_processes import exit_with_parent, stop_signals_deferred

_CHUNK = 2048
_WORKER_ENCODER: SequenceEncoder | None = None


def encode_records(
    encoder: SequenceEncoder, method: str, records: Sequence[Any], num_workers: int = 0
) -> list[Any]:
    """Apply ``encoder.<method>`` to every record; the truncation counts land in ``encoder.stats``.

    Args:
        encoder: The sequence encoder (its tokenizer reloads itself in each worker).
        method: ``pair`` (called with the record and its index), ``instruction`` or
            ``judge_example``.
        records: The records, in dataset order.
        num_workers: Worker processes; 0 or 1 encodes in this process.
    """
    # Several chunks per worker balance the load; chunks stay small enough to pickle cheaply.
    size = max(1, min(_CHUNK, -(-len(records) // (4 * max(num_workers, 1)))))
    chunks = [(method, i, records[i : i + size]) for i in range(0, len(records), size)]
    if num_workers <= 1 or len(chunks) <= 1:
        outputs = [_encode_chunk(encoder, *chunk) for chunk in chunks]
    else:
        # fork: the workers inherit the encoder instead of re-deriving the verdict token ids.
        context = multiprocessing.get_context("fork")
        with stop_signals_deferred():
            pool = context.Pool(
                num_workers, initializer=_start_worker, initargs=(encoder, os.getpid())
            )
        with pool:
            outputs = pool.starmap(_encode_in_worker, chunks)
    encoded: list[Any] = []
    for items, stats in outputs:
        encoded.extend(items)
        if stats is not encoder.stats:
            encoder.stats.add(stats)
    return encoded


def _start_worker(encoder: SequenceEncoder, parent_pid: int) -> None:
    global _WORKER_ENCODER
    exit_with_parent(parent_pid, stop_from_parent=True)  # Pool.terminate sends SIGTERM
    _WORKER_ENCODER = encoder


def _encode_in_worker(
    method: str, start: int, records: Sequence[Any]
) -> tuple[list[Any], TruncationStats]:
    assert _WORKER_ENCODER is not None
    _WORKER_ENCODER.stats = TruncationStats()
    return _encode_chunk(_WORKER_ENCODER, method, start, records)


def _encode_chunk(
    encoder: SequenceEncoder, method: str, start: int, records: Sequence[Any]
) -> tuple[list[Any], TruncationStats]:
    if method == "pair":
        items = [encoder.pair(record, start + i) for i, record in enumerate(records)]
    else:
        items = [getattr(encoder, method)(record) for record in records]
    return items, encoder.stats
