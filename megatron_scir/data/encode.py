"""Token sequences of the SCIR layout: policy [x‖y], judge J(x, ·, ·), SFT examples (SCIR_SPEC §9).

Policy sequence = chat(prompt) + response + EOS (no EOS after a response that was cut, by
generation or by the budget: it did not end there). The response's ids are the tail of
``encode(chat(prompt) + response)`` after the prompt's ids, i.e. the response is tokenised in
context as the model generated it; where the first response token merges with the prompt's last
one (a chat template ending in a space), the prompt's ids are kept and the response is encoded
as it reads mid-text (after a newline, without a word-initial space), and the event counted.

Truncation (SCIR_SPEC §9): the judge template's tail, right before the verdict, is never cut.
Fields (prompt, responses) are shortened by tokens of their own encoding and the text is
re-rendered and re-encoded, so a truncated sequence is still exactly ``encode(rendered text)``:
responses first to ``max_response_length`` each, then the prompt from the left, then, if the
template with an empty prompt still does not fit, the responses further. Policy prompts are
fitted to ``data.max_prompt_length`` by :func:`megatron_scir.data.prompts.fit_prompt`, the function
generation uses, so training conditions on the prompt ids a response was sampled for.

Cuts are counted per item (:class:`~megatron_scir.data.truncation.TruncationStats`, with the
longest item over each budget); the DataModules refuse a set whose share of cut items exceeds
``data.max_truncated_fraction`` before training on it. The tail never moves: a judge row's
verdict position is its last token whether it was cut or not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from megatron_scir.config import ConfigError, JudgeConfig
from megatron_scir.config.choices import JudgeKind
from megatron_scir.data.chat import ChatFormat
from megatron_scir.data.errors import DataError
from megatron_scir.data.judges import JUDGE_FORMATS, JudgeFormat
from megatron_scir.data.prompts import FittedPrompt, check_prompt_budget, fit_prompt
from megatron_scir.data.records import (
    PairRecord,
    PairwiseJudgeRecord,
    PointwiseJudgeRecord,
    SftRecord,
)
from megatron_scir.data.truncation import JUDGE_KEY, PROMPT_KEY, RESPONSE_KEY, TruncationStats

_IDS = np.int32


@dataclass(slots=True)
class EncodedPair:
    """One pair's token ids. ``judge`` rows are in layout order (see ``data.layout``)."""

    index: int
    prompt: np.ndarray
    responses: tuple[np.ndarray, np.ndarray]
    judge: tuple[np.ndarray, ...]
    label: float
    ref_logps: tuple[float, float] | None
    prev_logps: tuple[float, float] | None = None


@dataclass(slots=True)
class EncodedExample:
    """One SFT example: ``ids[:prompt_length]`` is context, the rest is trained on."""

    ids: np.ndarray
    prompt_length: int


class SequenceEncoder:
    """Encodes pairs and SFT examples into token ids within the configured budgets.

    Args:
        chat: Chat format (holds the tokenizer).
        judge: The judge section: its ``kind`` is the judge format of the pairs' judge rows
            (:mod:`megatron_scir.data.judges`); seed judge records of every kind are encoded.
        max_prompt_length: Budget of chat(prompt) in a policy sequence.
        max_response_length: Budget of a response (with its EOS).
        judge_max_length: Budget of a judge sequence (SFT: with the target and EOS).

    Raises:
        SingleTokenError: a verdict/score text is not one token after the judge prompt.
        ConfigError: the judge template alone does not fit ``judge_max_length``.
    """

    def __init__(
        self,
        chat: ChatFormat,
        judge: JudgeConfig,
        *,
        max_prompt_length: int,
        max_response_length: int,
        judge_max_length: int,
    ) -> None:
        self.chat, self.tok, self.judge = chat, chat.tokenizer, judge
        self.max_prompt_length = max_prompt_length
        self.max_response_length = max_response_length
        self.judge_max_length = judge_max_length
        self.stats = TruncationStats()
        self._prompt_cache: dict[str, FittedPrompt] = {}
        self.formats: dict[JudgeKind, JudgeFormat] = {
            kind: cls(judge) for kind, cls in JUDGE_FORMATS.items()
        }
        self.format = self.formats[JudgeKind(judge.kind)]
        self._candidate_ids: dict[JudgeKind, tuple[int, ...]] = {}
        check_prompt_budget(chat, max_prompt_length)
        self.candidate_ids(self.format)  # SCIR_SPEC §2: start-up fails on a multi-token verdict

    def candidate_ids(self, fmt: JudgeFormat) -> tuple[int, ...]:
        """The judge format's verdict or score token ids, derived in context once."""
        if fmt.kind not in self._candidate_ids:
            self._check_template_fits(fmt)
            self._candidate_ids[fmt.kind] = fmt.candidate_ids(self.chat)
        return self._candidate_ids[fmt.kind]

    def pair(self, pair: PairRecord, index: int) -> EncodedPair:
        """Policy rows for y1 and y2 and the judge rows of the configured layout."""
        item, before = _item(pair.where, f"pair {pair.pair_id!r}"), self._num_cuts()
        prompt_text, prompt_ids = self._prompt(pair.prompt, item)
        responses = (
            self._response(prompt_text, prompt_ids, pair.response_1, pair.truncated_1, item),
            self._response(prompt_text, prompt_ids, pair.response_2, pair.truncated_2, item),
        )
        judge = [
            self._judge_ids(self.format, fields, reserve=0, item=item)
            for fields in self.format.pair_fields(pair.prompt, pair.response_1, pair.response_2)
        ]
        self._count_item(before)
        label = {1: 1.0, 2: 0.0, None: -1.0}[pair.label]
        refs = None if pair.ref_logps_1 is None else (pair.ref_logps_1, pair.ref_logps_2)
        return EncodedPair(
            index=index,
            prompt=np.asarray(prompt_ids, _IDS),
            responses=(np.asarray(responses[0], _IDS), np.asarray(responses[1], _IDS)),
            judge=tuple(np.asarray(ids, _IDS) for ids in judge),
            label=label,
            ref_logps=refs,
            prev_logps=(
                None if pair.prev_logps_1 is None else (pair.prev_logps_1, pair.prev_logps_2)
            ),
        )

    def instruction(self, record: SftRecord) -> EncodedExample:
        """chat(prompt) + response + EOS, trained on the response and EOS."""
        item, before = _item(record.where, "instruction example"), self._num_cuts()
        prompt_text, prompt_ids = self._prompt(record.prompt, item)
        response = self._response(prompt_text, prompt_ids, record.response, False, item)
        self._count_item(before)
        return EncodedExample(np.asarray(prompt_ids + response, _IDS), len(prompt_ids))

    def judge_example(self, record: PairwiseJudgeRecord | PointwiseJudgeRecord) -> EncodedExample:
        """The judge sequence + its verdict/score token + EOS, trained on the last two.

        The record's kind (pairwise or pointwise) picks the judge format, whatever
        ``judge.kind`` is: the seed stage may teach both.
        """
        fmt = next(f for f in self.formats.values() if isinstance(record, f.record_type))
        candidates = self.candidate_ids(fmt)
        fields, target = fmt.example(record)
        before = self._num_cuts()
        ids = self._judge_ids(fmt, fields, reserve=2, item=_item(record.where, "judge example"))
        self._count_item(before)
        target = candidates[target]
        return EncodedExample(np.asarray([*ids, target, self.tok.eos_id], _IDS), len(ids))

    def _num_cuts(self) -> int:
        s = self.stats
        return s.num_prompts_truncated + s.num_responses_truncated + s.num_judge_truncated

    def _count_item(self, cuts_before: int) -> None:
        """Count one encoded item, and whether anything of it was cut since ``cuts_before``."""
        self.stats.num_items += 1
        self.stats.num_items_truncated += self._num_cuts() > cuts_before

    def _prompt(self, prompt: str, item: str) -> tuple[str, list[int]]:
        # Pairs of one prompt are adjacent: a small cache saves re-encoding the prompt. Counted
        # per call, so the counts do not depend on the cache or on how work is split.
        cached = self._prompt_cache.get(prompt)
        if cached is None:
            if len(self._prompt_cache) > 4096:
                self._prompt_cache.clear()
            # the one prompt budget: generation fits prompts with the same function
            cached = self._prompt_cache[prompt] = fit_prompt(
                self.chat, prompt, self.max_prompt_length
            )
        if cached.truncated:
            self.stats.num_prompts_truncated += 1
            self.stats.over_budget(PROMPT_KEY, cached.length, item)
        return cached.text, list(cached.ids)

    def _response(
        self, prompt_text: str, prompt_ids: list[int], response: str, truncated: bool, item: str
    ) -> list[int]:
        full = self.chat.encode(prompt_text + response)
        n = len(prompt_ids)
        if full[:n] == prompt_ids:
            ids = full[n:]
        else:
            self.stats.num_boundary_merges += 1
            ids = self._encode_mid_text(response)
        if not truncated:
            ids.append(self.tok.eos_id)
        if len(ids) > self.max_response_length:
            if truncated or len(ids) > self.max_response_length + 1:  # text lost, not only EOS
                self.stats.num_responses_truncated += 1
                self.stats.over_budget(RESPONSE_KEY, len(ids), item)
            else:  # the whole text fits: trained without the EOS after it
                self.stats.num_eos_dropped += 1
            ids = ids[: self.max_response_length]
        return ids

    def _encode_mid_text(self, text: str) -> list[int]:
        """Ids of ``text`` as it reads after a newline, without a word-initial "▁".

        The prompt's ids must stay as they are (generation conditioned on them), and encoding
        ``text`` alone would add SentencePiece's dummy-prefix space; after "\n" none is added.
        """
        newline = self.tok.encode("\n")
        ids = self.tok.encode("\n" + text)
        return ids[len(newline) :] if ids[: len(newline)] == newline else self.tok.encode(text)

    def _judge_ids(
        self, fmt: JudgeFormat, fields: tuple[str, ...], *, reserve: int, item: str
    ) -> list[int]:
        """Ids of the judge text of ``fields`` (prompt, responses…), fitted to the judge budget
        less ``reserve`` tokens (an SFT judge example's target and EOS)."""
        budget = self.judge_max_length - reserve
        cuts = [(0, "left")] + [(i, "right") for i in range(1, len(fields))]
        _, ids, length = self._fit(
            lambda f: fmt.judge_text(self.chat, *f),
            list(fields),
            budget,
            cuts,
            self.max_response_length,
        )
        if length > budget:
            self.stats.num_judge_truncated += 1
            self.stats.over_budget(JUDGE_KEY, length + reserve, item)
        return ids

    def _fit(
        self,
        render: Callable[[list[str]], str],
        values: list[str],
        budget: int,
        cuts: list[tuple[int, str]],
        response_budget: int | None = None,
    ) -> tuple[str, list[int], int]:
        """Shorten ``values`` until ``encode(render(values))`` fits ``budget`` (see module doc).

        ``cuts`` lists (field index, side) in the order fields give up tokens; fields other than
        the first are responses, first cut to ``response_budget``. Every round lowers one field's
        token limit, so the loop ends; the template itself is never cut.

        Returns:
            The fitted text, its ids, and the length of the whole text (over ``budget``: cut).
        """
        text = render(values)
        ids = self.chat.encode(text)
        length = len(ids)
        if length <= budget:
            return text, ids, length
        values = list(values)
        field_ids = {i: self.tok.encode(values[i]) for i, _ in cuts}
        limits = {i: len(field_ids[i]) for i, _ in cuts}
        if response_budget is not None:
            for i, _ in cuts[1:]:
                limits[i] = min(limits[i], response_budget)
        while True:
            for i, side in cuts:
                kept = field_ids[i][-limits[i] :] if side == "left" else field_ids[i][: limits[i]]
                values[i] = self.tok.decode(kept) if limits[i] else ""
            text = render(values)
            ids = self.chat.encode(text)
            over = len(ids) - budget
            if over <= 0:
                return text, ids, length
            index = next((i for i, _ in cuts if limits[i] > 0), None)
            if index is None:  # unreachable after the start-up checks, kept as a guard
                raise DataError(
                    f"a template alone takes {len(ids)} tokens, over its budget {budget}"
                )
            if index != cuts[0][0]:  # responses: cut the longest first, keeping them balanced
                index = max((i for i, _ in cuts[1:]), key=lambda i: limits[i])
            limits[index] = max(limits[index] - over, 0)

    def _check_template_fits(self, fmt: JudgeFormat) -> None:
        text = fmt.judge_text(self.chat, *[""] * len(fmt.placeholders))
        # SFT judge examples add the target token and EOS after the judge prompt.
        self._check_fits(
            f"the {fmt.kind} judge template",
            text,
            "data.judge_max_length",
            self.judge_max_length - 2,
            f"judge.{fmt.template_key}",
        )

    def _check_fits(self, what: str, text: str, key: str, budget: int, template_key: str) -> None:
        """Start-up check: a template with empty fields must leave room within its budget."""
        length = len(self.chat.encode(text))
        if length >= budget:
            raise ConfigError(
                f"{what} with empty fields takes {length} tokens with tokenizer {self.tok.name}, "
                f"which leaves no room within {key}: raise {key} or shorten {template_key}"
            )


def _item(where: str, name: str) -> str:
    """How messages name an item: ``pairs.jsonl:7 (pair 'p3:0:1')``."""
    return f"{where} ({name})" if where else name
