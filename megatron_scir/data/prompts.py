"""The one prompt budget: ``chat(prompt)`` within ``data.max_prompt_length`` tokens.

Generation, pair encoding, the reference pass and training all fit a prompt with
:func:`fit_prompt`, so a response sampled for a prompt is scored and trained on the very prompt
ids it was sampled for (SCIR_SPEC §1: the implicit reward compares conditionals of the same x).

A prompt over the budget is left-truncated: its text loses tokens from the start while the chat
template stays whole, so the model still sees a well-formed turn ending in the assistant header,
and the ids are exactly ``encode(chat(shortened prompt))``. Whether a run may cut its prompts at
all is ``data.max_truncated_fraction``'s to say (:mod:`megatron_scir.data.truncation`): the
callers measure every prompt first and refuse before sampling or training.
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_scir.config.errors import ConfigError
from megatron_scir.data.chat import ChatFormat
from megatron_scir.data.errors import DataError
from megatron_scir.data.records import Message, Prompt, as_prompt

BUDGET_KEY = "data.max_prompt_length"


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    """A prompt within the budget.

    Attributes:
        text: ``chat(prompt)`` rendered, the prompt text possibly shortened from the left.
        ids: ``encode(text)``, at most the budget.
        truncated: Whether the prompt text was shortened.
        length: Tokens of ``chat(prompt)`` before fitting: the budget that holds it whole.
    """

    text: str
    ids: tuple[int, ...]
    truncated: bool
    length: int


def check_prompt_budget(chat: ChatFormat, budget: int) -> None:
    """Start-up check: the chat template with an empty prompt leaves room within ``budget``.

    Raises:
        ConfigError: naming the template length, the tokenizer and the key to raise.
    """
    length = len(chat.encode(chat.render("")))
    if length >= budget:
        raise ConfigError(
            f"the chat template with an empty prompt takes {length} tokens with tokenizer "
            f"{chat.tokenizer.name}, which leaves no room within {BUDGET_KEY}={budget}: raise "
            f"{BUDGET_KEY} or shorten data.chat_template"
        )


def fit_prompt(chat: ChatFormat, prompt: Prompt, budget: int) -> FittedPrompt:
    """``chat(prompt)`` and its ids, left-truncating the prompt to fit ``budget`` tokens.

    A conversation first loses its oldest turns (a system turn stays), down to its last user
    turn; then, as a single prompt, the text of that turn loses tokens from its start. Each
    round drops at least one more token of the prompt's own encoding and re-renders, so the
    loop ends; the empty prompt fits after :func:`check_prompt_budget`.
    """
    text = chat.render(prompt)
    ids = chat.encode(text)
    length = len(ids)
    if length <= budget:
        return FittedPrompt(text, tuple(ids), truncated=False, length=length)
    system: tuple[Message, ...] = ()
    last = prompt
    if not isinstance(prompt, str):
        system = prompt[:1] if prompt[0].role == "system" else ()
        turns = list(prompt[len(system) :])
        while len(turns) > 1:
            turns = turns[1:]
            while turns[0].role != "user":
                turns = turns[1:]
            text = chat.render(as_prompt((*system, *turns)))
            ids = chat.encode(text)
            if len(ids) <= budget:
                return FittedPrompt(text, tuple(ids), truncated=True, length=length)
        last = turns[0].content

    def render(kept: str) -> str:
        return chat.render(as_prompt((*system, Message("user", kept))) if system else kept)

    tok = chat.tokenizer
    field = tok.encode(last)
    keep = len(field) - (len(chat.encode(render(last))) - budget)
    while True:
        keep = max(keep, 0)
        text = render(tok.decode(field[len(field) - keep :]) if keep else "")
        ids = chat.encode(text)
        over = len(ids) - budget
        if over <= 0:
            return FittedPrompt(text, tuple(ids), truncated=True, length=length)
        if keep == 0:
            check_prompt_budget(chat, budget)  # raises: the template alone is over budget
            raise DataError(
                f"a conversation's system turn takes {len(ids)} tokens with the chat template, "
                f"over {BUDGET_KEY}={budget}: raise {BUDGET_KEY} or shorten the system turn"
            )
        keep -= over
