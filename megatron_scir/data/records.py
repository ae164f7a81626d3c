"""Typed JSONL records and their field-by-field validation.

Each record kind has a dataclass and a parser from one decoded JSON object. Parsers raise
:class:`RecordProblem` (kind + detail); :mod:`megatron_scir.data.jsonl` adds the file and line.
Unknown extra fields are ignored, so files written by other tools with more fields still read.

A prompt is a string (one user turn) or a :data:`Conversation`: OpenAI-style messages
(``{"role", "content"}``, roles ``system`` / ``user`` / ``assistant``, a system turn only first,
ending with a user turn). One user turn alone is stored as its string, so single-turn data reads
the same whichever way it was written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RECORD_KINDS = ("prompts", "sft", "judge", "generations", "pairs")
ROLES = ("system", "user", "assistant")


class RecordProblem(Exception):
    """One problem with one record: ``kind`` groups skip counts, ``detail`` says what is wrong."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation."""

    role: str
    content: str


Conversation = tuple[Message, ...]
Prompt = str | Conversation
"""A user message, or a conversation ending with a user turn."""


def conversation(prompt: Prompt) -> Conversation:
    """``prompt`` as messages (a string is one user turn)."""
    return (Message("user", prompt),) if isinstance(prompt, str) else prompt


def messages_json(prompt: Prompt) -> list[dict[str, str]]:
    """``prompt`` as OpenAI-style message dicts."""
    return [{"role": m.role, "content": m.content} for m in conversation(prompt)]


def prompt_text(prompt: Prompt) -> str:
    """The text a grader or a judge reads: the string itself, or the conversation's turns as
    ``System: …`` / ``User: …`` / ``Assistant: …`` paragraphs (docs/data.md)."""
    if isinstance(prompt, str):
        return prompt
    return "\n\n".join(f"{m.role.capitalize()}: {m.content}" for m in prompt)


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """A prompt of the pool: ``{"id": "p1", "prompt": "..."}`` (or a message list)."""

    id: str
    prompt: Prompt
    where: str = field(default="", compare=False)
    """``path:line`` the record was read from (empty for records built in memory)."""


@dataclass(frozen=True, slots=True)
class SftRecord:
    """Seed instruction data: ``{"prompt": "...", "response": "..."}``."""

    prompt: Prompt
    response: str
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PairwiseJudgeRecord:
    """Seed judge data, pairwise: which of two responses is better (``"A"`` = response_a)."""

    prompt: Prompt
    response_a: str
    response_b: str
    verdict: str
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PointwiseJudgeRecord:
    """Seed judge data, pointwise: an integer score k (its text is ``judge.score_texts[k]``)."""

    prompt: Prompt
    response: str
    score: int
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """N sampled responses of one prompt; ``truncated[i]`` marks a response cut at max tokens."""

    prompt_id: str
    prompt: Prompt
    responses: tuple[str, ...]
    truncated: tuple[bool, ...]
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PairRecord:
    """An (unlabeled) preference pair; ``label`` 1 means response_1 is better, 2 response_2.

    ``ref_logps_1/2`` are log πref(y|x) summed over response tokens (SCIR_SPEC §1), written by
    the reference pass together with ``ref_judge_logits_12/21``, the M_t judge's log-odds that
    response_1 is better with it shown first / second (SCIR_SPEC §2; ``_21`` only with two
    judge orders); ``prev_logps_1/2`` are log π_{t−1}(y|x), the implicit reward's reference under
    ``scir.implicit_reference=previous`` (written by the same stage); ``truncated_1/2`` flag
    responses cut by generation (no EOS follows them).
    """

    pair_id: str
    prompt_id: str
    prompt: Prompt
    response_1: str
    response_2: str
    label: int | None = None
    ref_logps_1: float | None = None
    ref_logps_2: float | None = None
    ref_judge_logits_12: float | None = None
    ref_judge_logits_21: float | None = None
    prev_logps_1: float | None = None
    prev_logps_2: float | None = None
    truncated_1: bool = False
    truncated_2: bool = False
    where: str = field(default="", compare=False)


Record = (
    PromptRecord
    | SftRecord
    | PairwiseJudgeRecord
    | PointwiseJudgeRecord
    | GenerationRecord
    | PairRecord
)


def record_to_json(record: Record) -> dict[str, Any]:
    """The JSON object of a record: its fields except ``where``; unset optional fields left out."""
    out: dict[str, Any] = {}
    for name in record.__slots__:
        value = getattr(record, name)
        if name == "where" or value is None:
            continue
        if name in ("truncated_1", "truncated_2") and not value:
            continue
        if name == "prompt" and not isinstance(value, str):
            value = messages_json(value)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def _json_type(value: Any) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _get(
    obj: dict, name: str, expected: str, check: Callable[[Any], bool], *, required: bool
) -> Any:
    if name not in obj or (obj[name] is None and not required):
        if required:
            raise RecordProblem("missing field", f"missing field {name!r}")
        return None
    value = obj[name]
    if not check(value):
        got = f"{_json_type(value)} {value!r:.40}"
        raise RecordProblem("wrong type", f"field {name!r} must be {expected} (got {got})")
    return value


def _text(obj: dict, name: str, *, allow_empty: bool = False) -> str:
    value = _get(obj, name, "a string", lambda v: isinstance(v, str), required=True)
    if not allow_empty and not value.strip():
        raise RecordProblem("empty text", f"field {name!r} is empty")
    return value


def parse_messages(value: Any, name: str, *, last: str | None = "user") -> Conversation:
    """A message list checked turn by turn (``last``: the role the final turn must have)."""
    if not isinstance(value, list) or not value:
        got = f"{_json_type(value)} {value!r:.40}"
        raise RecordProblem(
            "wrong type", f"field {name!r} must be a non-empty list of messages (got {got})"
        )
    turns = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not {"role", "content"} <= message.keys():
            raise RecordProblem(
                "bad message", f"{name}[{i}] must be an object with 'role' and 'content'"
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise RecordProblem(
                "bad message", f"{name}[{i}]: role {role!r} is not one of {', '.join(ROLES)}"
            )
        # an assistant turn may be empty (a model's own earlier answer can be)
        if not isinstance(content, str) or (role != "assistant" and not content.strip()):
            raise RecordProblem("bad message", f"{name}[{i}]: 'content' must be a non-empty string")
        if role == "system" and i:
            raise RecordProblem("bad message", f"{name}[{i}]: a system turn may only come first")
        turns.append(Message(role, content))
    if last is not None and turns[-1].role != last:
        raise RecordProblem(
            "bad message", f"{name} must end with a {last} turn (ends with {turns[-1].role})"
        )
    return tuple(turns)


def as_prompt(turns: Conversation) -> Prompt:
    """One user turn alone is stored as its string."""
    return turns[0].content if len(turns) == 1 and turns[0].role == "user" else turns


def _prompt(obj: dict, name: str = "prompt") -> Prompt:
    """A prompt field: a non-empty string or a message list ending with a user turn."""
    if isinstance(obj.get(name), list):
        return as_prompt(parse_messages(obj[name], name))
    return _text(obj, name)


def _id(obj: dict, name: str) -> str:
    # Integer ids are accepted and normalised to strings (so 7 and "7" are the same id).
    value = _get(
        obj,
        name,
        "a string or an integer",
        lambda v: isinstance(v, str | int) and not isinstance(v, bool),
        required=True,
    )
    value = str(value)
    if not value.strip():
        raise RecordProblem("empty text", f"field {name!r} is empty")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite_number(obj: dict, name: str) -> float | None:
    value = _get(
        obj,
        name,
        "a number",
        lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        required=False,
    )
    if value is not None and not math.isfinite(value):
        raise RecordProblem("bad value", f"field {name!r} must be finite (got {value!r})")
    return None if value is None else float(value)


def parse_prompt(obj: dict, where: str = "") -> PromptRecord:
    return PromptRecord(id=_id(obj, "id"), prompt=_prompt(obj), where=where)


def parse_sft(obj: dict, where: str = "") -> SftRecord:
    return SftRecord(prompt=_prompt(obj), response=_text(obj, "response"), where=where)


def parse_judge(obj: dict, where: str = "") -> PairwiseJudgeRecord | PointwiseJudgeRecord:
    if "verdict" in obj:
        verdict = _get(obj, "verdict", '"A" or "B"', lambda v: v in ("A", "B"), required=True)
        return PairwiseJudgeRecord(
            prompt=_prompt(obj),
            response_a=_text(obj, "response_a"),
            response_b=_text(obj, "response_b"),
            verdict=verdict,
            where=where,
        )
    if "score" in obj:
        score = _get(obj, "score", "an integer", _is_int, required=True)
        if score < 0:
            raise RecordProblem("bad value", f"field 'score' must be >= 0 (got {score})")
        return PointwiseJudgeRecord(
            prompt=_prompt(obj), response=_text(obj, "response"), score=score, where=where
        )
    raise RecordProblem(
        "missing field",
        "a judge record needs 'verdict' (pairwise: prompt, response_a, response_b, verdict) "
        "or 'score' (pointwise: prompt, response, score)",
    )


def parse_generation(obj: dict, where: str = "") -> GenerationRecord:
    responses = _get(
        obj,
        "responses",
        "an array of strings",
        lambda v: isinstance(v, list) and all(isinstance(r, str) for r in v),
        required=True,
    )
    truncated = _get(
        obj,
        "truncated",
        "an array of booleans",
        lambda v: isinstance(v, list) and all(isinstance(t, bool) for t in v),
        required=True,
    )
    if not responses:
        raise RecordProblem("bad value", "field 'responses' is an empty array")
    if len(truncated) != len(responses):
        raise RecordProblem(
            "bad value",
            f"'truncated' has {len(truncated)} entries but 'responses' has {len(responses)}",
        )
    # Empty responses are allowed here: pair building drops and counts them (SCIR_SPEC §7).
    return GenerationRecord(
        prompt_id=_id(obj, "prompt_id"),
        prompt=_prompt(obj),
        responses=tuple(responses),
        truncated=tuple(truncated),
        where=where,
    )


def parse_pair(obj: dict, where: str = "") -> PairRecord:
    label = _get(
        obj,
        "label",
        "1 or 2 (1 = response_1 is better)",
        lambda v: v in (1, 2) and not isinstance(v, bool),
        required=False,
    )
    ref_1, ref_2 = _finite_number(obj, "ref_logps_1"), _finite_number(obj, "ref_logps_2")
    if (ref_1 is None) != (ref_2 is None):
        raise RecordProblem("missing field", "'ref_logps_1' and 'ref_logps_2' come together")
    judge_12 = _finite_number(obj, "ref_judge_logits_12")
    judge_21 = _finite_number(obj, "ref_judge_logits_21")
    if judge_21 is not None and judge_12 is None:
        raise RecordProblem(
            "missing field", "'ref_judge_logits_21' needs 'ref_judge_logits_12' (the first order)"
        )
    if judge_12 is not None and ref_1 is None:
        raise RecordProblem(
            "missing field", "'ref_judge_logits_12' comes with 'ref_logps_1' and 'ref_logps_2'"
        )
    prev_1, prev_2 = _finite_number(obj, "prev_logps_1"), _finite_number(obj, "prev_logps_2")
    if (prev_1 is None) != (prev_2 is None):
        raise RecordProblem("missing field", "'prev_logps_1' and 'prev_logps_2' come together")
    is_bool = lambda v: isinstance(v, bool)  # noqa: E731
    return PairRecord(
        pair_id=_id(obj, "pair_id"),
        prompt_id=_id(obj, "prompt_id"),
        prompt=_prompt(obj),
        response_1=_text(obj, "response_1"),
        response_2=_text(obj, "response_2"),
        label=label,
        ref_logps_1=ref_1,
        ref_logps_2=ref_2,
        ref_judge_logits_12=judge_12,
        ref_judge_logits_21=judge_21,
        prev_logps_1=prev_1,
        prev_logps_2=prev_2,
        truncated_1=bool(_get(obj, "truncated_1", "a boolean", is_bool, required=False)),
        truncated_2=bool(_get(obj, "truncated_2", "a boolean", is_bool, required=False)),
        where=where,
    )


PARSERS: dict[str, Callable[[dict, str], Record]] = {
    "prompts": parse_prompt,
    "sft": parse_sft,
    "judge": parse_judge,
    "generations": parse_generation,
    "pairs": parse_pair,
}
ID_FIELDS: dict[str, str | None] = {
    "prompts": "id",
    "sft": None,
    "judge": None,
    "generations": "prompt_id",
    "pairs": "pair_id",
}
