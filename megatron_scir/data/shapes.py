"""Record shapes as people hold chat data, recognised per row and turned into this project's own.

=============  =============================================  ================================
shape          fields                                         read as
=============  =============================================  ================================
``native``     this project's fields (``id`` + ``prompt``,    as they are (a ``prompt`` may
               ``prompt`` + ``response``, …)                  be a message list)
``messages``   ``messages``: OpenAI-style turns               prompt = the turns up to the
                                                              last user turn; response = the
                                                              final assistant turn
``preference`` ``prompt`` (optional) + ``chosen`` +           a labelled pair (chosen better);
               ``rejected``, strings or message lists         prompts: its prompt; sft: prompt
               (UltraFeedback-binarized, HH-RLHF, TRL)        + chosen; judge: a pairwise
                                                              verdict, or (pointwise judge)
                                                              chosen scored K, rejected 0
=============  =============================================  ================================

``data.columns`` renames source columns first (``["prompt=instruction", "response=output"]``).
Ids that a shape lacks are made from the row: ``id`` / ``prompt_id`` / ``pair_id`` when the
row has one, else ``row<N>``; a preference pair's order (chosen first or second) follows a hash
of its id, so neither position is always the better one.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from megatron_scir.data.errors import DataError
from megatron_scir.data.records import (
    RecordProblem,
    as_prompt,
    messages_json,
    parse_messages,
)

NATIVE, MESSAGES, PREFERENCE = "native", "messages", "preference"
NATIVE_FIELDS = {
    "prompts": ("id", "prompt"),
    "sft": ("prompt", "response"),
    "judge": ("prompt",),
    "generations": ("prompt_id", "responses"),
    "pairs": ("pair_id", "response_1"),
}
EXPECTED = {
    "prompts": '{"id", "prompt"}, {"messages"} or {"prompt", "chosen", "rejected"}',
    "sft": '{"prompt", "response"}, {"messages"} ending with an assistant turn, or '
    '{"prompt", "chosen", "rejected"}',
    "judge": '{"prompt", "response_a", "response_b", "verdict"}, {"prompt", "response", '
    '"score"} or {"prompt", "chosen", "rejected"}',
    "pairs": '{"pair_id", "prompt_id", "prompt", "response_1", "response_2"}, or '
    '{"prompt", "chosen", "rejected"}',
}


def parse_columns(columns: Sequence[str]) -> dict[str, str]:
    """``data.columns`` (``["prompt=instruction", …]``) as ``{source column: our field}``."""
    mapping: dict[str, str] = {}
    for entry in columns:
        ours, sep, theirs = entry.partition("=")
        if not sep or not ours.strip() or not theirs.strip():
            raise DataError(
                f"data.columns entry {entry!r}: expected FIELD=COLUMN (e.g. prompt=instruction)"
            )
        mapping[theirs.strip()] = ours.strip()
    return mapping


def check_columns(mapping: dict[str, str], row: dict, where: str) -> None:
    """Refuse a mapped column the source does not have, unless it has the field itself
    (one mapping serves files of several shapes); checked on its first row."""
    for theirs, ours in mapping.items():
        if theirs not in row and ours not in row:
            close = difflib.get_close_matches(theirs, list(row), n=3)
            hint = f"; close: {', '.join(close)}" if close else ""
            raise DataError(
                f"data.columns maps {ours}={theirs} but {where} has no column {theirs!r} "
                f"(columns: {', '.join(map(str, row))}{hint})"
            )


def rename(row: dict, mapping: dict[str, str]) -> dict:
    if not mapping:
        return row
    return {mapping.get(key, key): value for key, value in row.items()}


def shape_of(row: dict, kind: str) -> str:
    """Which shape ``row`` has for record ``kind`` (``native`` when none of the others)."""
    if kind in ("generations",):
        return NATIVE
    if "chosen" in row and "rejected" in row:
        return PREFERENCE
    if "messages" in row and not all(f in row for f in NATIVE_FIELDS[kind]):
        return MESSAGES
    return NATIVE


def to_native(
    row: dict, kind: str, number: int, *, judge_scores: int | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """``(shape, the row's records in this project's fields)``: one record, or two pointwise
    judge records of a preference row under ``judge_scores`` = K (chosen K, rejected 0).
    Raises :class:`RecordProblem`."""
    shape = shape_of(row, kind)
    if shape == NATIVE:
        return shape, [row]
    if shape == MESSAGES:
        return shape, [_from_messages(row, kind, number)]
    native = _from_preference(row, kind, number)
    if kind == "judge" and judge_scores is not None:
        chosen, rejected = (
            (native["response_a"], native["response_b"])
            if native["verdict"] == "A"
            else (native["response_b"], native["response_a"])
        )
        prompt = native["prompt"]
        return shape, [
            {"prompt": prompt, "response": chosen, "score": judge_scores},
            {"prompt": prompt, "response": rejected, "score": 0},
        ]
    return shape, [native]


def _row_id(row: dict, names: Sequence[str], number: int) -> str:
    for name in names:
        value = row.get(name)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value)
    return f"row{number}"


def _from_messages(row: dict, kind: str, number: int) -> dict[str, Any]:
    if kind == "sft":
        turns = parse_messages(row["messages"], "messages", last="assistant")
        if len(turns) < 2 or turns[-2].role != "user":
            raise RecordProblem(
                "bad message", "'messages' of an SFT example end with a user turn, then the answer"
            )
        return {"prompt": messages_json(turns[:-1]), "response": turns[-1].content}
    if kind == "prompts":
        turns = parse_messages(row["messages"], "messages", last=None)
        if turns[-1].role == "assistant":  # the conversation up to the last user turn
            turns = turns[:-1]
        if turns[-1].role != "user":
            raise RecordProblem("bad message", "'messages' holds no user turn to answer")
        return {"id": _row_id(row, ("id", "prompt_id"), number), "prompt": messages_json(turns)}
    raise RecordProblem(
        "wrong shape", f"a 'messages' row has no {kind} record in it (expected {EXPECTED[kind]})"
    )


def _side(row: dict, name: str, prompt: Any) -> tuple[Any, str]:
    """(the conversation before the answer, the answer) of a preference row's side."""
    value = row[name]
    if isinstance(value, str):
        if prompt is None:
            raise RecordProblem(
                "missing field", f"{name!r} is a string: the row needs a 'prompt' field too"
            )
        if not value.strip():
            raise RecordProblem("empty text", f"field {name!r} is empty")
        return prompt, value
    turns = parse_messages(value, name, last="assistant")
    if len(turns) == 1:
        if prompt is None:
            raise RecordProblem("missing field", f"{name!r} holds only the answer: add 'prompt'")
        return prompt, turns[0].content
    before = turns[:-1]
    if before[-1].role != "user":
        raise RecordProblem("bad message", f"{name!r}: the answer must follow a user turn")
    return messages_json(as_prompt(before)), turns[-1].content


def _from_preference(row: dict, kind: str, number: int) -> dict[str, Any]:
    prompt = row.get("prompt")
    if prompt is not None and not isinstance(prompt, str | list):
        raise RecordProblem("wrong type", "field 'prompt' must be a string or a message list")
    context_c, chosen = _side(row, "chosen", prompt)
    context_r, rejected = _side(row, "rejected", prompt)
    if _canonical(context_c) != _canonical(context_r):
        raise RecordProblem(
            "bad message", "'chosen' and 'rejected' continue different conversations"
        )
    context = context_c
    if kind == "prompts":
        return {"id": _row_id(row, ("prompt_id", "id"), number), "prompt": context}
    if kind == "sft":
        return {"prompt": context, "response": chosen}
    pair_id = _row_id(row, ("pair_id", "id"), number)
    first = _chosen_first(pair_id)
    a, b = (chosen, rejected) if first else (rejected, chosen)
    if kind == "judge":
        return {"prompt": context, "response_a": a, "response_b": b, "verdict": "AB"[not first]}
    if kind == "pairs":
        prompt_id = _row_id(row, ("prompt_id",), number)
        if prompt_id == f"row{number}":  # the prompt's content names it
            digest = hashlib.sha256(_canonical(context).encode()).hexdigest()[:16]
            prompt_id = f"prompt-{digest}"
        return {
            "pair_id": pair_id,
            "prompt_id": prompt_id,
            "prompt": context,
            "response_1": a,
            "response_2": b,
            "label": 1 if first else 2,
        }
    raise RecordProblem("wrong shape", f"a preference row has no {kind} record in it")


def _canonical(prompt: Any) -> str:
    if isinstance(prompt, list):
        parsed = as_prompt(parse_messages(prompt, "prompt"))
        prompt = parsed if isinstance(parsed, str) else messages_json(parsed)
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _chosen_first(pair_id: str) -> bool:
    return hashlib.sha256(pair_id.encode()).digest()[0] % 2 == 0
