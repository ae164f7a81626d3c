"""Text helpers every judge format shares: one-pass template filling, in-context token ids.

The generative judge is read from logits, not from sampled text (SCIR_SPEC §2): a judge
sequence is ``chat(rendered judge instruction) + judge.verdict_prefix`` and the verdict (or
score) token is the one predicted next. Which token id "A" becomes depends on what precedes it
(SentencePiece spells a word-initial "A" as "▁A"), so the ids are derived *in context*: encode
a rendered judge prompt, then prompt + text; each text must add exactly one token.
"""

from __future__ import annotations

import re

from megatron_scir.data.chat import ChatFormat
from megatron_scir.data.errors import SingleTokenError

__all__ = ["PROBE_PROMPT", "PROBE_RESPONSES", "in_context_token_ids", "render_template"]

# Any text works as a probe: the verdict follows the template's fixed tail (SCIR_SPEC §9 never
# truncates it), so the verdict token is the same for every rendered judge prompt.
PROBE_PROMPT = "What is two plus two?"
PROBE_RESPONSES = ("Four.", "It is 5.")


def render_template(template: str, **fields: str) -> str:
    """Replace the ``{name}`` placeholders of ``template`` named by ``fields`` in one pass.

    One pass: a placeholder spelled inside a user's prompt or response is never substituted
    again (``str.format`` or chained ``str.replace`` would do that, or choke on braces).
    Placeholders without a field and every other brace are kept as literal text.
    """
    if not fields:
        return template
    pattern = re.compile(r"\{(" + "|".join(map(re.escape, fields)) + r")\}")
    return pattern.sub(lambda m: fields[m.group(1)], template)


def in_context_token_ids(chat: ChatFormat, context: str, texts: list[str]) -> list[int]:
    """The single token each of ``texts`` adds after ``context``; ids must be distinct and known.

    Args:
        chat: The chat format (its tokenizer, and whether ``context`` gets BOS).
        context: A rendered judge prompt, ending right before the verdict.
        texts: The verdict or score texts.

    Returns:
        One token id per text, in order.

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
