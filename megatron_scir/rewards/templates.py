"""Judge prompt rendering and in-context verdict/score token ids (SCIR_SPEC §2).

The generative judge is read from logits, not from sampled text: a judge sequence is
``chat(rendered judge instruction) + judge.verdict_prefix`` and the verdict (or score) token is
the one predicted next. Which token id "A" becomes depends on what precedes it (SentencePiece
spells a word-initial "A" as "▁A"), so the ids are derived *in context*: encode the rendered
judge prompt, then prompt + text; each text must add exactly one token.

This module renders text and derives ids; the data pipeline (``megatron_scir.data``) builds the
sequences, and the reward math consumes the ids.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from megatron_scir.data.errors import SingleTokenError

if TYPE_CHECKING:
    from megatron_scir.config import JudgeConfig
    from megatron_scir.data.chat import ChatFormat

# One pass over the template: a placeholder spelled inside a user's prompt or response is never
# substituted again (str.format / chained str.replace would do that, or choke on braces).
_PLACEHOLDER = re.compile(r"\{(prompt|response_a|response_b|response)\}")

# Any text works as a probe: the verdict follows the template's fixed tail (SCIR_SPEC §9 never
# truncates it), so the verdict token is the same for every rendered judge prompt.
_PROBE_PROMPT = "What is two plus two?"
_PROBE_RESPONSES = ("Four.", "It is 5.")


def render_template(template: str, **fields: str) -> str:
    """Replace ``{name}`` placeholders of ``template`` by ``fields`` in one pass.

    Placeholders without a field and every other brace are kept as literal text.
    """
    return _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), template)


def render_pairwise(judge: JudgeConfig, prompt: str, first: str, second: str) -> str:
    """The pairwise judge instruction J(x, first, second): ``first`` is shown as response A."""
    return render_template(
        judge.pairwise_template, prompt=prompt, response_a=first, response_b=second
    )


def render_pointwise(judge: JudgeConfig, prompt: str, response: str) -> str:
    """The pointwise judge instruction J(x, y) (SRLM's additive 0–5 rubric by default)."""
    return render_template(judge.pointwise_template, prompt=prompt, response=response)


def judge_prompt_text(chat: ChatFormat, judge: JudgeConfig, instruction: str) -> str:
    """The full judge text, ending right before the verdict: chat(instruction) + verdict_prefix."""
    return chat.render(instruction) + judge.verdict_prefix


def probe_judge_text(chat: ChatFormat, judge: JudgeConfig, kind: str | None = None) -> str:
    """A rendered judge prompt of ``kind`` (default ``judge.kind``) used to derive token ids."""
    kind = kind or judge.kind
    if kind == "pairwise":
        instruction = render_pairwise(judge, _PROBE_PROMPT, *_PROBE_RESPONSES)
    else:
        instruction = render_pointwise(judge, _PROBE_PROMPT, _PROBE_RESPONSES[0])
    return judge_prompt_text(chat, judge, instruction)


def in_context_token_ids(chat: ChatFormat, context: str, texts: list[str]) -> list[int]:
    """The single token each of ``texts`` adds after ``context``; ids must be distinct and known.

    Raises:
        SingleTokenError: a text adds zero or several tokens (the message names the texts and
            the ids found), two texts share an id, or a text is the unknown token.
    """
    tok = chat.tokenizer
    add_bos = chat.add_bos(context)
    ids = [tok.in_context_token_id(context, text, add_bos=add_bos) for text in texts]
    unknown = [text for text, i in zip(texts, ids, strict=True) if i == tok.unk_id]
    if unknown:
        raise SingleTokenError(
            f"{unknown} become the unknown token (id {tok.unk_id}) with tokenizer {tok.name}: "
            "choose verdict/score texts the tokenizer knows"
        )
    if len(set(ids)) != len(ids):
        raise SingleTokenError(
            f"texts {texts} map to token ids {ids} with tokenizer {tok.name}: each needs its own id"
        )
    return ids


def verdict_token_ids(chat: ChatFormat, judge: JudgeConfig) -> tuple[int, int]:
    """Ids of ``judge.verdict_texts`` after a rendered pairwise judge prompt (first, second)."""
    first, second = in_context_token_ids(
        chat, probe_judge_text(chat, judge, "pairwise"), list(judge.verdict_texts)
    )
    return first, second


def score_token_ids(chat: ChatFormat, judge: JudgeConfig) -> tuple[int, ...]:
    """Ids of ``judge.score_texts`` (scores 0..K) after a rendered pointwise judge prompt."""
    context = probe_judge_text(chat, judge, "pointwise")
    return tuple(in_context_token_ids(chat, context, list(judge.score_texts)))


def judge_candidate_token_ids(chat: ChatFormat, judge: JudgeConfig) -> tuple[int, ...]:
    """The token ids the judge's logits are read at: verdicts (pairwise) or scores (pointwise)."""
    if judge.kind == "pairwise":
        return verdict_token_ids(chat, judge)
    return score_token_ids(chat, judge)
