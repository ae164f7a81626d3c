"""Chat formatting of policy prompts and judge instructions (one user turn + assistant header).

``data.chat_template`` picks the format:

- ``plain`` (default): ``PLAIN_CHAT_TEMPLATE`` below. It ends with a newline so that the first
  response token never merges with the header (SentencePiece and BPE tokenizers do not merge
  across ``\\n``), which keeps the prompt's token ids a stable prefix of prompt + response.
- ``tokenizer``: the Hugging Face tokenizer's own chat template (``add_generation_prompt``).
- any other string: a format string containing ``{prompt}`` exactly once (other braces are
  literal text).
"""

from __future__ import annotations

from megatron_scir.config.errors import ConfigError
from megatron_scir.data.tokenizer import Tokenizer

PLAIN_CHAT_TEMPLATE = "User: {prompt}\n\nAssistant:\n"
PROMPT_PLACEHOLDER = "{prompt}"


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

    def render(self, prompt: str) -> str:
        """The text of one user turn holding ``prompt`` plus the assistant header."""
        if self._format is None:
            return self.tokenizer.apply_chat_template(prompt)
        return self._format.replace(PROMPT_PLACEHOLDER, prompt)

    def add_bos(self, text: str) -> bool:
        """BOS goes first unless the rendered text already spells it (HF chat templates do)."""
        tok = self.tokenizer
        return tok.bos_id is not None and not (tok.bos_text and text.startswith(tok.bos_text))

    def encode(self, text: str) -> list[int]:
        """Ids of a rendered text (a prompt, or a prompt followed by more text)."""
        return self.tokenizer.encode(text, add_bos=self.add_bos(text))
