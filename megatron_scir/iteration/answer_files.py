"""Answer files for the standard judges: AlpacaEval 2 and MT-Bench (``scir evaluate --format``).

==============  ===============================================  ===============================
``--format``    questions read (any data source)                 answers written to ``--out``
==============  ===============================================  ===============================
``jsonl``       this project's prompts                           the generations format
``alpaca_eval`` AlpacaEval's eval set: ``instruction``            ``model_outputs.json``: a JSON
                (``dataset`` kept when present)                  array of ``instruction``,
                                                                 ``output``, ``generator``,
                                                                 ``dataset``
``mt_bench``    FastChat's ``question.jsonl``: ``question_id``,  FastChat's answer JSONL:
                ``category``, ``turns`` (1 or more user turns)   ``question_id``, ``answer_id``,
                                                                 ``model_id``, ``choices[{index,
                                                                 turns}]``, ``tstamp``
==============  ===============================================  ===============================

Answers are greedy, in the generation layout, resumable (each pass is a generations file under
the work folder). MT-Bench's turn k is answered in conversation: the prompt is turns 1..k with
the model's own answers to the earlier turns between them, rendered by the chat template. The
answer file is written under a temporary name, then renamed. Judging the files needs an API
key and the network (docs/iterations.md); nothing here calls a judge.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_scir.config import Config
from megatron_scir.data import DataError, read_records
from megatron_scir.data.records import Message, PromptRecord, as_prompt
from megatron_scir.data.sources import describe_missing, iter_rows, parse_source
from megatron_scir.data.stream import atomic_open, encode_json_line
from megatron_scir.iteration.evaluate import greedy_answers
from megatron_scir.parallel.runtime import Runtime
from megatron_scir.recipe import ModelSource

FORMATS = ("jsonl", "alpaca_eval", "mt_bench")
DEFAULT_DATASET = "megatron-scir"


@dataclass(frozen=True)
class Question:
    """One question: its id and user turns (AlpacaEval: one), plus what the format keeps."""

    id: str
    turns: tuple[str, ...]
    extra: dict[str, Any]


def read_questions(path: str | os.PathLike, fmt: str) -> list[Question]:
    """The questions of an AlpacaEval or MT-Bench file (one-line errors naming file and row)."""
    source = parse_source(path)
    missing = describe_missing(source, f"{fmt} questions")
    if missing:
        raise DataError(missing)
    questions = []
    for number, row in _rows(source):
        where = f"{source.spec}:{number}"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected an object")
        if fmt == "alpaca_eval":
            text = row.get("instruction")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: an AlpacaEval row needs a non-empty 'instruction'")
            extra = {"dataset": row.get("dataset") or DEFAULT_DATASET}
            questions.append(Question(f"q{number}", (text,), extra))
        else:
            turns, qid = row.get("turns"), row.get("question_id")
            if not isinstance(turns, list) or not turns or not all(
                isinstance(t, str) and t.strip() for t in turns
            ):
                raise DataError(f"{where}: an MT-Bench question needs 'turns', a list of texts")
            if qid is None or isinstance(qid, bool) or not isinstance(qid, int | str):
                raise DataError(f"{where}: an MT-Bench question needs a 'question_id'")
            questions.append(Question(str(qid), tuple(turns), {"question_id": qid}))
    if not questions:
        raise DataError(f"{source.spec}: no {fmt} questions")
    if len({q.id for q in questions}) != len(questions):
        raise DataError(f"{source.spec}: question ids repeat")
    return questions


def _rows(source):
    if source.form != "jsonl":
        yield from iter_rows(source)
        return
    with open(source.path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as error:
                    where = f"{source.spec}:{number}"
                    raise DataError(f"{where}: malformed JSON ({error.msg})") from None


def answer_file(
    runtime: Runtime,
    cfg: Config,
    tokenizer,
    questions_path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str,
    model: ModelSource,
    model_id: str,
    work_dir: str | os.PathLike,
    progress: bool | None = None,
) -> Path:
    """Answer every question greedily with ``model`` and write ``out`` in ``fmt``. Collective."""
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        return greedy_answers(
            runtime, cfg, tokenizer, questions_path, out, model=model, progress=progress
        )
    questions = runtime.on_rank_zero(lambda: read_questions(questions_path, fmt))
    work = Path(work_dir)
    answers: dict[str, list[str]] = {q.id: [] for q in questions}
    for k in range(max(len(q.turns) for q in questions)):
        prompts = [
            PromptRecord(id=q.id, prompt=_conversation(q, answers[q.id], k))
            for q in questions
            if len(q.turns) > k
        ]
        turn_file = work / f"{fmt}_turn{k + 1}.jsonl"
        greedy_answers(runtime, cfg, tokenizer, prompts, turn_file, model=model, progress=progress)
        records = runtime.on_rank_zero(lambda f=turn_file: read_records(f, "generations")[0])
        for record in records:
            answers[record.prompt_id].append(record.responses[0].strip())
    runtime.on_rank_zero(lambda: _write(out, fmt, questions, answers, model_id))
    return Path(out)


def _conversation(question: Question, answers: list[str], k: int):
    """Turn k's prompt: the user turns 1..k with the model's answers to the earlier ones."""
    turns = []
    for i in range(k + 1):
        turns.append(Message("user", question.turns[i]))
        if i < k:
            turns.append(Message("assistant", answers[i]))
    return as_prompt(tuple(turns))


def _write(out, fmt: str, questions: list[Question], answers: dict, model_id: str) -> None:
    if fmt == "alpaca_eval":
        rows = [
            {
                "instruction": q.turns[0],
                "output": answers[q.id][0],
                "generator": model_id,
                "dataset": q.extra["dataset"],
            }
            for q in questions
        ]
        with atomic_open(out) as fh:
            fh.write(json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8"))
        return
    stamp = time.time()
    with atomic_open(out) as fh:
        for q in questions:
            digest = hashlib.sha256(f"{model_id}|{q.id}".encode()).hexdigest()[:22]
            fh.write(
                encode_json_line(
                    {
                        "question_id": q.extra["question_id"],
                        "answer_id": digest,
                        "model_id": model_id,
                        "choices": [{"index": 0, "turns": answers[q.id]}],
                        "tstamp": stamp,
                    }
                )
            )
