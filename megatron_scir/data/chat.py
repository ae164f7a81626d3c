"""Chat formatting of policy prompts and judge instructions (the turns + the assistant header).

``data.chat_template`` picks the format:

- ``plain`` (default): ``PLAIN_CHAT_TEMPLATE`` below. It ends with a newline so that the first
  response token never merges with the header (SentencePiece and BPE tokenizers do not merge
  across ``\\n``), which keeps the prompt's token ids a stable prefix of prompt + response.
- ``tokenizer``: the Hugging Face tokenizer's own chat template (``add_generation_prompt``).
- any other string: a format string containing ``{prompt}`` exactly once (other braces are
  literal text).

A prompt may be a conversation (:data:`~megatron_scir.data.records.Conversation`): the HF template
renders its messages; ``plain`` renders each turn as ``System: …\n\n``, ``User: …\n\n`` or
``Assistant:\n…\n\n`` (an answer reads as it follows the header) and ends with the header, so a
single user turn renders exactly as before; a format string holds one user turn and refuses
conversations.
"""

from __future__ import annotations

from megatron_scir.config.errors import ConfigError
from megatron_scir.data.errors import DataError
from megatron_scir.data.records import Prompt, messages_json
from megatron_scir.data.tokenizer import Tokenizer

PLAIN_CHAT_TEMPLATE = "User: {prompt}\n\nAssistant:\n"
PROMPT_PLACEHOLDER = "{prompt}"
_PLAIN_TURNS = {
    "system": "System: {}\n\n",
    "user": "User: {}\n\n",
    "assistant": "Assistant:\n{}\n\n",
}


class ChatFormat:
    """Renders a user message as the text right before the assistant's response, and encodes it.

    Args:
        template: ``data.chat_template`` (``plain``, ``tokenizer`` or a format string).
        tokenizer: The tokenizer whose chat template ``tokenizer`` refers to and whose BOS is
            put first.
    """

    def __init__(self, template: str, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.kind = template if template in ("plain", "tokenizer") else "format"
        if template == "tokenizer":
            if not tokenizer.chat_template:
                raise ConfigError(
                    f"data.chat_template=tokenizer but tokenizer {tokenizer.name} has no chat "
                    "template: use data.chat_template=plain or a format string with {prompt}"
                )
            self._format = None
        else:
            self._format = PLAIN_CHAT_TEMPLATE if template == "plain" else template
            if self._format.count(PROMPT_PLACEHOLDER) != 1:
                raise ConfigError(
                    f"data.chat_template {template!r} must contain {PROMPT_PLACEHOLDER} exactly "
                    "once (or be plain / tokenizer)"
                )

    def render(self, prompt: Prompt) -> str:
        """The text of ``prompt``'s turns (one user turn for a string) plus the assistant
        header."""
        if self._format is None:
            if isinstance(prompt, str):
                return self.tokenizer.apply_chat_template(prompt)
            return self.tokenizer.apply_chat_template(messages_json(prompt))
        if isinstance(prompt, str):
            return self._format.replace(PROMPT_PLACEHOLDER, prompt)
        if self.kind != "plain":
            raise DataError(
                "a conversation prompt needs data.chat_template=plain or tokenizer (a format "
                "string renders one user turn)"
            )
        return "".join(_PLAIN_TURNS[m.role].format(m.content) for m in prompt) + "Assistant:\n"

    def add_bos(self, text: str) -> bool:
        """BOS goes first unless the rendered text already spells it (HF chat templates do)."""
        tok = self.tokenizer
        return tok.bos_id is not None and not (tok.bos_text and text.startswith(tok.bos_text))

    def encode(self, text: str) -> list[int]:
        """Ids of a rendered text (a prompt, or a prompt followed by more text)."""
        return self.tokenizer.encode(text, add_bos=self.add_bos(text))
