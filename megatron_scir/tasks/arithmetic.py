"""Integer addition: an instruction task whose correct answer a program grades.

A prompt asks for the sum of two operands from ``[0, max_operand]``::

    What is 7 + 8?        ->  15

:func:`grade` recomputes the sum from the prompt (no lookup table) and is the grader hook
``iteration.grader: megatron_scir.tasks.arithmetic:grade``; :func:`oracle_pair_label` turns it
into a pair label for oracle-label DPO. Wrong answers for mixed-quality data are *near misses*:
the sum plus a small nonzero offset (:data:`NEAR_MISS_OFFSETS`), never negative.

The task is a *closed world*: its facts are all the ordered operand pairs ``(a, b)`` in
``[0, max_operand] ** 2`` ((7, 8) and (8, 7) are different facts; the default ``max_operand=9``
gives 100), and every file draws from the same facts; nothing is held out. A tiny model must
learn the task on two CPU cores in about a minute, which a small world allows and unseen
operands would not; evaluation then measures whether the model states each fact correctly. For
the self-rewarding loop to have something to fix, the seed SFT data teaches some facts wrong
while the seed judge data mostly knows better:

- A fraction ``misconception_rate`` of the facts (``round(rate * facts)``) are *misconceived*:
  each has one fixed wrong answer, a near miss (:func:`misconceptions` returns them). A fraction
  ``misconception_strength`` of a misconceived fact's SFT records (each drawn at random) state
  it; the rest are correct.
- The other facts' SFT records are wrong, a random near miss each, at ``round(sft_error_rate *
  num_sft)`` random positions drawn over *all* the records; the positions that fall on
  misconceived facts are ignored, so fewer records than that are random near misses.
- Each judge record pits the correct answer against the fact's misconception (a random near
  miss for the other facts); exactly ``round(judge_error_rate * num_judge)`` verdicts, at random
  positions, name the wrong answer (the seed judge starts imperfect, as in SRLM).

:func:`write_task_files` writes everything a self-rewarding run on this task needs:

- ``tokenizer.model``: a SentencePiece BPE model trained on the task's own text, one piece per
  digit (``split_digits``), unk=0, bos=1, eos=2, pad=3, identity normalisation; every printable
  ASCII character is a piece, so any ASCII text encodes without unk.
- ``seed_sft.jsonl``: ``{"prompt", "response"}``, ``num_sft`` records.
- ``seed_judge.jsonl``: pairwise ``{"prompt", "response_a", "response_b", "verdict"}``,
  ``num_judge`` records, the correct and the wrong response in random order.
- ``prompts.jsonl``: the iteration prompt pool ``{"id": "p00001", "prompt"}``, ``num_prompts``
  records.
- ``eval_prompts.jsonl``: every fact once, in order (ids ``e00001``…).
- ``eval_pairs.jsonl``: every fact once, a labelled pair of the correct answer and the fact's
  misconception (a random near miss for the other facts) in random order, ``label`` naming the
  correct one (``prompt_id`` ``q00001``…, ``pair_id`` ``q00001:0:1``).

The seed SFT, judge and iteration records cycle through the facts, each pass reshuffled, so
every fact occurs ``n / facts`` times, rounded down or up. Everything is deterministic given
``seed``: the same call writes byte-identical files.
"""

from __future__ import annotations

import os
import random
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from megatron_scir.data.chat import PLAIN_CHAT_TEMPLATE, PROMPT_PLACEHOLDER
from megatron_scir.data.jsonl import write_records
from megatron_scir.data.records import PairRecord, PairwiseJudgeRecord, PromptRecord, SftRecord
from megatron_scir.data.stream import atomic_open
from megatron_scir.data.tokenizer import train_sentencepiece_bpe

__all__ = [
    "NEAR_MISS_OFFSETS",
    "PAIRWISE_JUDGE_TEMPLATE",
    "TaskFiles",
    "correct_answer",
    "grade",
    "make_prompt",
    "misconceptions",
    "near_miss",
    "oracle_pair_label",
    "parse_operands",
    "write_task_files",
]

PAIRWISE_JUDGE_TEMPLATE = (
    "Question: {prompt}\nAnswer A: {response_a}\nAnswer B: {response_b}\n"
    "Which answer is correct, A or B?"
)
"""The task's pairwise judge instruction (``judge.pairwise_template``); with the plain chat
template the verdict token "A" / "B" follows ``"...A or B?\\n\\nAssistant:\\n"``."""

NEAR_MISS_OFFSETS = (-11, -10, -2, -1, 1, 2, 10, 11)
"""Offsets a near miss adds to the correct sum (off by one or two, or a tens-digit slip)."""

_PROMPT_FORMAT = "What is {a} + {b}?"
_PROMPT_RE = re.compile(r"What is (\d+) \+ (\d+)\?")
_VERDICTS = ("A", "B")
_MIN_VOCAB_SIZE = 128
# General English besides the task's text, so BPE finds enough merges to fill the vocabulary
# (the task text alone runs out of pair statistics well before 256 pieces).
_FILLER = (
    "The answer is the sum of the two numbers.",
    "Add the ones digits first, then the tens digits, and carry a one when needed.",
    "What is two plus two? Four. It is 5.",
    "zero one two three four five six seven eight nine ten eleven twelve twenty thirty forty",
    "fifty sixty seventy eighty ninety hundred plus minus equals number numbers total",
    "Please answer with the number only. The first answer is right and the second is wrong.",
    "Both answers are wrong. Neither answer is correct. That answer is not the sum.",
    "Here is a question about adding numbers, with a short answer after it.",
)


def make_prompt(a: int, b: int) -> str:
    """The prompt asking for ``a + b`` (``"What is 37 + 48?"``)."""
    return _PROMPT_FORMAT.format(a=a, b=b)


def parse_operands(prompt: str) -> tuple[int, int]:
    """The two operands of a task prompt (the text may surround the question, once).

    Raises:
        ValueError: ``prompt`` does not hold exactly one ``What is <a> + <b>?`` question.
    """
    matches = _PROMPT_RE.findall(prompt)
    if len(matches) != 1:
        raise ValueError(
            f"not an arithmetic task prompt (expected one 'What is <a> + <b>?'): {prompt!r}"
        )
    a, b = matches[0]
    return int(a), int(b)


def correct_answer(prompt: str) -> str:
    """The correct response to ``prompt``: the decimal sum (``"85"``)."""
    a, b = parse_operands(prompt)
    return str(a + b)


def grade(prompt: str, response: str) -> float:
    """The oracle score of ``response`` to ``prompt``: 1.0 if correct, else 0.0.

    The grader hook ``megatron_scir.tasks.arithmetic:grade``. A response is correct when,
    stripped of surrounding whitespace and of one optional trailing period, it is exactly the
    sum's decimal text (``"85"``, ``" 85.\\n"``; not ``"085"``, ``"+85"`` or ``"85 apples"``).

    Raises:
        ValueError: the prompt is not a task prompt (the message names it).
    """
    truth = correct_answer(prompt)
    return 1.0 if response.strip().removesuffix(".") == truth else 0.0


def oracle_pair_label(prompt: str, response_1: str, response_2: str) -> int | None:
    """The pair label by :func:`grade`: 1 or 2 names the better response, None on a tie."""
    score_1, score_2 = grade(prompt, response_1), grade(prompt, response_2)
    if score_1 == score_2:
        return None
    return 1 if score_1 > score_2 else 2


def near_miss(answer: int, rng: random.Random) -> int:
    """A wrong answer close to ``answer``: plus an offset of :data:`NEAR_MISS_OFFSETS`, >= 0."""
    if answer < 0:
        raise ValueError(f"answer must be >= 0 (got {answer})")
    return answer + rng.choice([o for o in NEAR_MISS_OFFSETS if answer + o >= 0])


@dataclass(frozen=True)
class TaskFiles:
    """The files :func:`write_task_files` wrote (config keys in brackets).

    Attributes:
        tokenizer: SentencePiece ``.model`` (``data.tokenizer_path``).
        seed_sft: Seed instruction data (``data.seed_sft``).
        seed_judge: Seed pairwise judge data (``data.seed_judge``).
        prompts: Iteration prompt pool (``data.prompts``).
        eval_prompts: Evaluation prompts, every fact once (``iteration.eval_prompts``).
        eval_pairs: Evaluation labelled pairs, every fact once (``iteration.eval_pairs``).
    """

    tokenizer: Path
    seed_sft: Path
    seed_judge: Path
    prompts: Path
    eval_prompts: Path
    eval_pairs: Path


def write_task_files(
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    max_operand: int = 9,
    num_sft: int = 2000,
    num_judge: int = 2000,
    num_prompts: int = 512,
    misconception_rate: float = 0.3,
    misconception_strength: float = 0.8,
    sft_error_rate: float = 0.1,
    judge_error_rate: float = 0.2,
    vocab_size: int = 256,
) -> TaskFiles:
    """Write the task's tokenizer and data files into ``out_dir`` (created), atomically.

    Args:
        out_dir: Directory of the files (names as the :class:`TaskFiles` fields).
        seed: Seeds every random choice; the same call gives byte-identical files.
        max_operand: Operands are drawn from ``[0, max_operand]``: the world's facts.
        num_sft: Seed SFT records (cycling through the facts).
        num_judge: Seed pairwise judge records (cycling through the facts).
        num_prompts: Iteration prompts (cycling through the facts, each pass reshuffled).
        misconception_rate: Fraction of the facts the seed SFT data teaches wrong.
        misconception_strength: Fraction of a misconceived fact's SFT records that state its
            one fixed wrong answer (the rest are correct).
        sft_error_rate: Fraction of the other facts' SFT records that are random near misses.
        judge_error_rate: Fraction of seed judge records whose verdict names the wrong answer.
        vocab_size: Pieces of the SentencePiece model (256 fits the ``tiny`` preset).

    Returns:
        The paths written.

    Raises:
        ValueError: a bad argument.
    """
    _check_args(
        max_operand=max_operand,
        counts={"num_sft": num_sft, "num_judge": num_judge, "num_prompts": num_prompts},
        rates={
            "misconception_rate": misconception_rate,
            "misconception_strength": misconception_strength,
            "sft_error_rate": sft_error_rate,
            "judge_error_rate": judge_error_rate,
        },
        vocab_size=vocab_size,
    )
    facts = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng = random.Random(f"arithmetic:{seed}:misconceptions")
    misconceived = rng.sample(facts, round(misconception_rate * len(facts)))
    wrong_answer = {fact: near_miss(sum(fact), rng) for fact in misconceived}

    sft = _sft_records(
        facts, num_sft, wrong_answer, misconception_strength, sft_error_rate,
        random.Random(f"arithmetic:{seed}:sft"),
    )
    judge = _judge_records(
        facts, num_judge, wrong_answer, judge_error_rate, random.Random(f"arithmetic:{seed}:judge")
    )
    prompts = _cycle(facts, num_prompts, random.Random(f"arithmetic:{seed}:prompts"))
    eval_pairs = _eval_pairs(facts, wrong_answer, random.Random(f"arithmetic:{seed}:eval_pairs"))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = TaskFiles(
        tokenizer=out / "tokenizer.model",
        seed_sft=out / "seed_sft.jsonl",
        seed_judge=out / "seed_judge.jsonl",
        prompts=out / "prompts.jsonl",
        eval_prompts=out / "eval_prompts.jsonl",
        eval_pairs=out / "eval_pairs.jsonl",
    )
    write_records(files.seed_sft, sft)
    write_records(files.seed_judge, judge)
    write_records(files.prompts, _prompt_records(prompts, "p"))
    write_records(files.eval_prompts, _prompt_records(facts, "e"))
    write_records(files.eval_pairs, eval_pairs)
    model = _train_tokenizer(_tokenizer_corpus(sft, judge), vocab_size)
    with atomic_open(files.tokenizer) as fh:
        fh.write(model)
    return files


def misconceptions(
    seed: int = 0, max_operand: int = 9, misconception_rate: float = 0.3
) -> dict[tuple[int, int], int]:
    """The facts the seed SFT data of ``write_task_files(seed=...)`` teaches wrong, with the
    wrong answer it teaches (for analysis: which facts the self-rewarding loop must fix)."""
    facts = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng = random.Random(f"arithmetic:{seed}:misconceptions")
    misconceived = rng.sample(facts, round(misconception_rate * len(facts)))
    return {fact: near_miss(sum(fact), rng) for fact in misconceived}


def _check_args(
    *, max_operand: int, counts: dict[str, int], rates: dict[str, float], vocab_size: int
) -> None:
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1 (got {max_operand})")
    for name, value in counts.items():
        if value < 0:
            raise ValueError(f"{name} must be >= 0 (got {value})")
    for name, value in rates.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be in [0, 1] (got {value})")
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be >= {_MIN_VOCAB_SIZE} (got {vocab_size}): the special tokens "
            "and the printable ASCII characters alone take about 100 pieces"
        )


Fact = tuple[int, int]


def _cycle(pool: Sequence[Fact], n: int, rng: random.Random) -> list[Fact]:
    """``n`` facts from passes over ``pool``, each pass in a fresh random order."""
    out: list[Fact] = []
    while len(out) < n:
        batch = list(pool)
        rng.shuffle(batch)
        out.extend(batch[: n - len(out)])
    return out


def _wrong_positions(n: int, rate: float, rng: random.Random) -> set[int]:
    return set(rng.sample(range(n), round(rate * n)))


def _sft_records(
    facts: Sequence[Fact],
    n: int,
    wrong_answer: dict[Fact, int],
    strength: float,
    error_rate: float,
    rng: random.Random,
) -> list[SftRecord]:
    ops = _cycle(facts, n, rng)
    noisy = _wrong_positions(n, error_rate, rng)
    records = []
    for i, (a, b) in enumerate(ops):
        if (a, b) in wrong_answer:
            answer = wrong_answer[a, b] if rng.random() < strength else a + b
        else:
            answer = near_miss(a + b, rng) if i in noisy else a + b
        records.append(SftRecord(prompt=make_prompt(a, b), response=str(answer)))
    return records


def _wrong_response(fact: Fact, wrong_answer: dict[Fact, int], rng: random.Random) -> str:
    """The misconception when the fact has one, else a random near miss."""
    return str(wrong_answer.get(fact, near_miss(sum(fact), rng)))


def _judge_records(
    facts: Sequence[Fact],
    n: int,
    wrong_answer: dict[Fact, int],
    error_rate: float,
    rng: random.Random,
) -> list[PairwiseJudgeRecord]:
    ops = _cycle(facts, n, rng)
    flipped = _wrong_positions(n, error_rate, rng)
    records = []
    for i, (a, b) in enumerate(ops):
        correct, miss = str(a + b), _wrong_response((a, b), wrong_answer, rng)
        correct_first = rng.random() < 0.5
        first, second = (correct, miss) if correct_first else (miss, correct)
        verdict = _VERDICTS[(0 if correct_first else 1) ^ (i in flipped)]
        records.append(
            PairwiseJudgeRecord(
                prompt=make_prompt(a, b), response_a=first, response_b=second, verdict=verdict
            )
        )
    return records


def _prompt_records(ops: Iterable[Fact], prefix: str) -> list[PromptRecord]:
    return [
        PromptRecord(id=f"{prefix}{i:05d}", prompt=make_prompt(a, b))
        for i, (a, b) in enumerate(ops, start=1)
    ]


def _eval_pairs(
    facts: Sequence[Fact], wrong_answer: dict[Fact, int], rng: random.Random
) -> list[PairRecord]:
    records = []
    for i, (a, b) in enumerate(facts, start=1):
        correct, miss = str(a + b), _wrong_response((a, b), wrong_answer, rng)
        label = 1 if rng.random() < 0.5 else 2
        first, second = (correct, miss) if label == 1 else (miss, correct)
        prompt_id = f"q{i:05d}"
        records.append(
            PairRecord(
                pair_id=f"{prompt_id}:0:1",
                prompt_id=prompt_id,
                prompt=make_prompt(a, b),
                response_1=first,
                response_2=second,
                label=label,
            )
        )
    return records


def _chat(prompt: str) -> str:
    return PLAIN_CHAT_TEMPLATE.replace(PROMPT_PLACEHOLDER, prompt)


def _render_judge(prompt: str, response_a: str, response_b: str) -> str:
    # One pass, like megatron_scir.data.judges.render_template (not imported here: that package
    # imports torch).
    fields = {"prompt": prompt, "response_a": response_a, "response_b": response_b}
    return re.sub(
        r"\{(prompt|response_a|response_b)\}", lambda m: fields[m.group(1)], PAIRWISE_JUDGE_TEMPLATE
    )


def _tokenizer_corpus(sft: Sequence[SftRecord], judge: Sequence[PairwiseJudgeRecord]) -> list[str]:
    """The sequences the seed stage trains on, as text, plus general filler text."""
    corpus = [_chat(r.prompt) + r.response for r in sft]
    corpus += [
        _chat(_render_judge(r.prompt, r.response_a, r.response_b)) + r.verdict for r in judge
    ]
    return corpus + list(_FILLER)


def _train_tokenizer(corpus: Sequence[str], vocab_size: int) -> bytes:
    """A SentencePiece BPE model of ``corpus`` with one piece per digit, every printable ASCII
    character a piece (serialised; deterministic)."""
    return train_sentencepiece_bpe(
        corpus,
        vocab_size,
        required_chars="".join(c for c in string.printable if not c.isspace()),
        split_digits=True,
    )
