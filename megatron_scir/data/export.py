"""Pairs as a standard preference dataset, for TRL and the other trainers (``scir export-pairs``).

Each exported row is TRL's conversational preference format with an explicit prompt::

    {"prompt": [{"role": "user", "content": "..."}],          # the conversation (system turns kept)
     "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}],
     "pair_id": "...", "prompt_id": "...", "chosen_by": "agreed",
     "p_judge": 0.83, "p_implicit": 0.61, "consistent": true, "label": 1}

``p_judge`` / ``p_implicit`` are P(response_1 ≻ response_2) of the model's judge and implicit
reward (the pair's own order), ``label`` the pair's label where it had one. Which response is
``chosen`` is decided by ``chosen_by``; pairs without a decision are left out and counted.

The format follows the output's suffix: ``.parquet`` (pyarrow), ``.jsonl``, ``.json``, or any
other name: a ``datasets`` ``save_to_disk`` folder. Written under a temporary name, then renamed:
a stopped export leaves no half-written dataset.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from megatron_scir.data.errors import DataError
from megatron_scir.data.records import PairRecord, messages_json
from megatron_scir.data.stream import atomic_open, encode_json_line

CHOSEN_BY = ("agreed", "judge", "implicit", "label")
"""agreed: the pairs the judge and the implicit reward agree on (SCIR's selection), the side both
prefer; judge / implicit: that reward's preferred side (ties within scir.tie_eps left out);
label: the pair's own label (SRLM's or the grader's)."""


def preference_rows(
    pairs: Sequence[PairRecord],
    verdicts: Sequence[dict[str, Any]],
    *,
    chosen_by: str,
    tie_eps: float,
) -> tuple[list[dict[str, Any]], Counter]:
    """The exported rows and why the others were left out (``{reason: count}``)."""
    if chosen_by not in CHOSEN_BY:
        raise DataError(f"chosen_by={chosen_by!r}: expected one of {', '.join(CHOSEN_BY)}")
    if chosen_by in ("agreed", "implicit") and verdicts and "p_implicit" not in verdicts[0]:
        raise DataError(
            f"--chosen-by {chosen_by} needs the implicit reward: pass --ref-ckpt (the model "
            "the policy was trained from)"
        )
    rows, left_out = [], Counter()
    for pair, verdict in zip(pairs, verdicts, strict=True):
        first = _first_chosen(pair, verdict, chosen_by, tie_eps)
        if first is None:
            left_out[f"no {chosen_by} decision"] += 1
            continue
        chosen, rejected = (
            (pair.response_1, pair.response_2) if first else (pair.response_2, pair.response_1)
        )
        rows.append(
            {
                "prompt": messages_json(pair.prompt),
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "pair_id": pair.pair_id,
                "prompt_id": pair.prompt_id,
                "chosen_by": chosen_by,
                "p_judge": verdict["p_judge"],
                "p_implicit": verdict.get("p_implicit"),
                "consistent": verdict.get("consistent"),
                "label": pair.label,
            }
        )
    return rows, left_out


def _first_chosen(pair: PairRecord, verdict: dict, chosen_by: str, tie_eps: float) -> bool | None:
    if chosen_by == "label":
        return None if pair.label is None else pair.label == 1
    if chosen_by == "agreed":
        return (verdict["p_judge"] > 0.5) if verdict["consistent"] else None
    p = verdict["p_judge" if chosen_by == "judge" else "p_implicit"]
    return None if abs(p - 0.5) <= tie_eps else p > 0.5


def write_preference_dataset(rows: list[dict[str, Any]], out: str | os.PathLike) -> str:
    """Write ``rows`` to ``out`` in the format its suffix names; the format written."""
    out = Path(out)
    if not rows:
        raise DataError(f"{out}: no pair to export (every pair was left out): nothing written")
    if out.suffix == ".jsonl":
        with atomic_open(out) as fh:
            for row in rows:
                fh.write(encode_json_line(row))
        return "jsonl"
    if out.suffix == ".json":
        with atomic_open(out) as fh:
            fh.write(json.dumps(rows, ensure_ascii=False).encode("utf-8"))
        return "json"
    if out.suffix == ".parquet":
        try:
            import pyarrow as pa  # lazy: optional
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(
                f"{out}: writing Parquet needs pyarrow (pip install -e .[data])"
            ) from None
        with atomic_open(out) as fh:
            pq.write_table(pa.Table.from_pylist(rows), fh)
        return "parquet"
    try:
        import datasets  # lazy: optional
    except ImportError:
        raise DataError(
            f"{out}: a save_to_disk folder needs the datasets package (pip install -e .[data]); "
            "or name a .parquet / .jsonl file"
        ) from None
    staging = out.with_name(f".{out.name}.incomplete")
    shutil.rmtree(staging, ignore_errors=True)
    datasets.Dataset.from_list(rows).save_to_disk(str(staging))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return "save_to_disk"
