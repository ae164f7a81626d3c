"""Typed JSONL records and their field-by-field validation.

Each record kind has a dataclass and a parser from one decoded JSON object. Parsers raise
:class:`RecordProblem` (kind + detail); :mod:`megatron_scir.data.jsonl` adds the file and line.
Unknown extra fields are ignored, so files written by other tools with more fields still read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RECORD_KINDS = ("prompts", "sft", "judge", "generations", "pairs")


class RecordProblem(Exception):
    """One problem with one record: ``kind`` groups skip counts, ``detail`` says what is wrong."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.detail = kind, detail


@dataclass(frozen=True, slots=True)
class PromptRecord:
    """A prompt of the pool: ``{"id": "p1", "prompt": "..."}``."""

    id: str
    prompt: str
    where: str = field(default="", compare=False)
    """``path:line`` the record was read from (empty for records built in memory)."""


@dataclass(frozen=True, slots=True)
class SftRecord:
    """Seed instruction data: ``{"prompt": "...", "response": "..."}``."""

    prompt: str
    response: str
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PairwiseJudgeRecord:
    """Seed judge data, pairwise: which of two responses is better (``"A"`` = response_a)."""

    prompt: str
    response_a: str
    response_b: str
    verdict: str
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class PointwiseJudgeRecord:
    """Seed judge data, pointwise: an integer score k (its text is ``judge.score_texts[k]``)."""

    prompt: str
    response: str
    score: int
    where: str = field(default="", compare=False)


@dataclass(frozen=True, slots=True)
class GenerationRecord:
    """N sampled responses of one prompt; ``truncated[i]`` marks a response cut at max tokens."""

    prompt_id: str
    prompt: str
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
    prompt: str
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
    return PromptRecord(id=_id(obj, "id"), prompt=_text(obj, "prompt"), where=where)


def parse_sft(obj: dict, where: str = "") -> SftRecord:
    return SftRecord(prompt=_text(obj, "prompt"), response=_text(obj, "response"), where=where)


def parse_judge(obj: dict, where: str = "") -> PairwiseJudgeRecord | PointwiseJudgeRecord:
    if "verdict" in obj:
        verdict = _get(obj, "verdict", '"A" or "B"', lambda v: v in ("A", "B"), required=True)
        return PairwiseJudgeRecord(
            prompt=_text(obj, "prompt"),
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
            prompt=_text(obj, "prompt"), response=_text(obj, "response"), score=score, where=where
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
        prompt=_text(obj, "prompt"),
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
        prompt=_text(obj, "prompt"),
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
