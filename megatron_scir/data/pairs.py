"""Unlabeled preference pairs from N sampled responses per prompt (SCIR_SPEC §7, step 2).

Per prompt: empty responses and exact duplicates (after stripping outer whitespace) are dropped
and counted; truncated responses are kept, flagged or dropped (``data.truncated_responses``);
from the m distinct responses left, ``min(pairs_per_prompt, m(m-1)/2)`` pairs are built with no
pair twice. Pairs are disjoint first (every response used before one is reused), so two pairs
from four responses cover all four; the rest are drawn from the unused combinations. The order
inside a pair is a coin flip. All draws come from a generator seeded by ``(seed, prompt_id)``,
so a prompt's pairs do not depend on which other prompts are in the file or their order.

:func:`repeat_pairs` fills a set of pairs that does not fill one global batch up to one
(``iteration.too_few_pairs=repeat``): every pair once, then seeded copies.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from megatron_scir.config.choices import TruncatedResponses, choices
from megatron_scir.data.errors import DataError
from megatron_scir.data.records import GenerationRecord, PairRecord


@dataclass
class PairBuildReport:
    """Counts of one pair-building run (all are logged by :meth:`summary`)."""

    num_prompts: int = 0
    num_responses: int = 0
    num_empty: int = 0
    num_duplicate: int = 0
    num_truncated: int = 0
    num_truncated_dropped: int = 0
    num_prompts_without_pairs: int = 0
    num_pairs: int = 0
    num_pairs_with_truncated: int = 0

    def summary(self) -> str:
        """One line: what went in, what was dropped and why, what came out."""
        return (
            f"{self.num_pairs} pairs from {self.num_prompts} prompts / {self.num_responses} "
            f"responses; dropped {self.num_empty} empty, {self.num_duplicate} duplicate, "
            f"{self.num_truncated_dropped} truncated responses; {self.num_truncated} truncated "
            f"seen, {self.num_pairs_with_truncated} pairs hold a flagged one; "
            f"{self.num_prompts_without_pairs} prompts had fewer than 2 usable responses"
        )


def build_pairs(
    generations: Iterable[GenerationRecord],
    *,
    pairs_per_prompt: int = 2,
    truncated_responses: str = "keep",
    seed: int = 1234,
) -> tuple[list[PairRecord], PairBuildReport]:
    """Build unlabeled pairs from generation records.

    Args:
        generations: One record per prompt with its sampled responses.
        pairs_per_prompt: Pairs wanted per prompt (fewer when there are not enough responses).
        truncated_responses: ``keep`` (use as complete responses), ``flag`` (use, and mark the
            pair's ``truncated_1/2`` so no EOS is appended after them in training) or ``drop``.
        seed: Base seed; each prompt's draws use ``(seed, prompt_id)``.

    Returns:
        Pairs in input order (``pair_id = "<prompt_id>:<i>:<j>"``, i/j the response indices
        shown as response_1/response_2), and the counts.
    """
    if truncated_responses not in choices(TruncatedResponses):
        raise DataError(
            f"data.truncated_responses={truncated_responses!r}: expected keep|flag|drop"
        )
    if pairs_per_prompt < 1:
        raise DataError(f"data.pairs_per_prompt must be >= 1 (got {pairs_per_prompt})")
    report = PairBuildReport()
    pairs: list[PairRecord] = []
    for record in generations:
        report.num_prompts += 1
        report.num_responses += len(record.responses)
        usable = _usable_responses(record, truncated_responses, report)
        rng = random.Random(f"{seed}:{record.prompt_id}")
        chosen = _choose_pairs(len(usable), pairs_per_prompt, rng)
        if not chosen:
            report.num_prompts_without_pairs += 1
        for a, b in chosen:
            first, second = (usable[a], usable[b]) if rng.random() < 0.5 else (usable[b], usable[a])
            pair = _make_pair(
                record, first, second, flag=truncated_responses == TruncatedResponses.FLAG
            )
            report.num_pairs_with_truncated += pair.truncated_1 or pair.truncated_2
            pairs.append(pair)
    report.num_pairs = len(pairs)
    return pairs, report


def _usable_responses(record: GenerationRecord, policy: str, report: PairBuildReport) -> list[int]:
    """Indices of the responses that may be paired, in sampling order."""
    seen: set[str] = set()
    usable = []
    for index, (text, truncated) in enumerate(zip(record.responses, record.truncated, strict=True)):
        key = text.strip()
        if not key:
            report.num_empty += 1
            continue
        if key in seen:
            report.num_duplicate += 1
            continue
        seen.add(key)
        report.num_truncated += truncated
        if truncated and policy == TruncatedResponses.DROP:
            report.num_truncated_dropped += 1
            continue
        usable.append(index)
    return usable


def _choose_pairs(m: int, wanted: int, rng: random.Random) -> list[tuple[int, int]]:
    """``min(wanted, m(m-1)/2)`` distinct unordered pairs of positions 0..m-1, disjoint first."""
    order = list(range(m))
    rng.shuffle(order)
    disjoint = [tuple(sorted(order[i : i + 2])) for i in range(0, m - 1, 2)]
    chosen = disjoint[:wanted]
    if len(chosen) < wanted:
        used = set(chosen)
        rest = [p for p in itertools.combinations(range(m), 2) if p not in used]
        chosen += rng.sample(rest, min(wanted - len(chosen), len(rest)))
    return chosen


def _make_pair(record: GenerationRecord, first: int, second: int, *, flag: bool) -> PairRecord:
    return PairRecord(
        pair_id=f"{record.prompt_id}:{first}:{second}",
        prompt_id=record.prompt_id,
        prompt=record.prompt,
        response_1=record.responses[first],
        response_2=record.responses[second],
        truncated_1=flag and record.truncated[first],
        truncated_2=flag and record.truncated[second],
    )


REPEAT_SEPARATOR = "#"
"""A copy's ``pair_id`` is ``<pair_id>#<round>`` (round 1, 2, ...): unique in the file."""


def repeat_pairs(pairs: Sequence[PairRecord], target: int, *, seed: str) -> list[PairRecord]:
    """``pairs`` filled up to ``target`` pairs with copies (``iteration.too_few_pairs=repeat``).

    Every pair once, in file order, then rounds of copies: round r is a permutation of the
    pairs drawn from ``(seed, r)``, taken whole while ``target`` allows and cut where it does
    not, so no pair has two copies more than another (Megatron's answer to fewer samples than
    asked for: another, reshuffled epoch). A copy equals its pair but for ``pair_id``
    (``<pair_id>#<r>``). The result depends on the pairs, ``target`` and ``seed`` only: the
    same file under every layout and in every rerun.

    Args:
        pairs: At least one pair.
        target: The number of pairs wanted (one global batch); ``len(pairs)`` or more.
        seed: The draws' seed (the driver's: ``"<train.seed>:<t>"``).
    """
    if not pairs:
        raise DataError("no pairs to repeat")
    out = list(pairs)
    round_ = 0
    while len(out) < target:
        round_ += 1
        order = list(range(len(pairs)))
        random.Random(f"{seed}:repeat:{round_}").shuffle(order)
        out += [
            dataclasses.replace(
                pairs[i], pair_id=f"{pairs[i].pair_id}{REPEAT_SEPARATOR}{round_}", where=""
            )
            for i in order[: target - len(out)]
        ]
    return out
