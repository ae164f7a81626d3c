"""One small tokenizer interface over SentencePiece model files and Hugging Face tokenizers.

Both backends give ids without special tokens; BOS is added only when asked (the chat format
decides, see :mod:`megatron_scir.data.chat`). Padding uses the tokenizer's pad id, or EOS when
the model defines none (Llama/Mistral SentencePiece models): padded positions never carry loss,
attention is causal, and no code finds where a sequence ends by looking for the pad id (lengths
are explicit in collation; generation stops on sampled ids only), so the pad id's value does not
matter to the math, even when it is EOS or another stop id.

A tokenizer's ``stop_ids`` are the ids that end a response in generation (:func:`hf_stop_ids`
states the rule for Hugging Face folders; SentencePiece models stop on EOS).
"""

from __future__ import annotations

import abc
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import sentencepiece

from megatron_scir.config.choices import TokenizerType
from megatron_scir.data.errors import DataError, SingleTokenError

if TYPE_CHECKING:
    from megatron_scir.config import DataConfig, ModelConfig

logger = logging.getLogger(__name__)


class Tokenizer(abc.ABC):
    """What the data pipeline needs from a tokenizer.

    Attributes:
        name: Where the tokenizer came from (for messages).
        vocab_size: Number of token ids (before Megatron's padding for tensor parallelism).
        bos_id: Beginning-of-sequence id, or None when the tokenizer has none.
        eos_id: End-of-sequence id (ends every complete response; appended after training
            responses).
        pad_id: Id used for right-padding (EOS when the tokenizer defines no pad).
        unk_id: Unknown-token id, or None (byte-level tokenizers have none).
        bos_text: How BOS is spelled inside chat-template text (None without BOS).
    """

    name: str
    vocab_size: int
    bos_id: int | None
    eos_id: int
    pad_id: int
    unk_id: int | None
    bos_text: str | None

    @abc.abstractmethod
    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Token ids of ``text`` without special tokens, with BOS first when ``add_bos``."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; BOS, EOS and pad ids are left out."""

    @abc.abstractmethod
    def pieces(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary strings of ``ids`` (for error messages)."""

    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end a response in generation: EOS, plus a model's other end-of-turn ids."""
        return frozenset({self.eos_id})

    def decode_continuation(self, prefix_ids: Sequence[int], ids: Sequence[int]) -> str:
        """The text ``ids`` add after ``prefix_ids``, decoded in context.

        Decoding generated ids alone drops a word-initial space (SentencePiece strips the
        leading "▁" of a text); in context the space is kept, so that encoding
        ``prompt + text`` gives back the generated tokens.
        """
        before = self.decode(prefix_ids)
        full = self.decode([*prefix_ids, *ids])
        return full[len(before) :] if full.startswith(before) else self.decode(ids)

    @property
    def chat_template(self) -> str | None:
        """The tokenizer's own chat template (Jinja), if it ships one."""
        return None

    def apply_chat_template(self, prompt: str | list[dict[str, str]]) -> str:
        """Render ``prompt`` (one user turn, or OpenAI-style messages) plus the assistant
        header, with the tokenizer's own template."""
        raise DataError(
            f"tokenizer {self.name} has no chat template: set data.chat_template=plain or a "
            "format string with {prompt}"
        )

    def in_context_token_id(self, context: str, text: str, *, add_bos: bool) -> int:
        """The one token ``text`` adds after ``context`` (SCIR_SPEC §2: "A" vs "▁A" in context).

        Args:
            context: The rendered text the token follows (e.g. the judge prompt).
            text: The text that must become exactly one new token (e.g. ``"A"``).
            add_bos: Whether ``context`` is encoded with BOS (as the data pipeline does).

        Raises:
            SingleTokenError: ``context + text`` does not extend ``context``'s ids by exactly one
                token; the message names both texts and the ids found.
        """
        before = self.encode(context, add_bos=add_bos)
        after = self.encode(context + text, add_bos=add_bos)
        if len(after) == len(before) + 1 and after[: len(before)] == before:
            return after[-1]
        common = 0
        while common < min(len(before), len(after)) and before[common] == after[common]:
            common += 1
        raise SingleTokenError(
            f"{text!r} does not add exactly one token after the rendered prompt ending "
            f"{context[-40:]!r} with tokenizer {self.name}: the prompt's last ids are "
            f"{before[max(common - 2, 0) :]} and prompt+{text!r} ends with ids "
            f"{after[max(common - 2, 0) :]} (pieces {self.pieces(after[common:])}). Choose "
            "verdict/score texts that are single tokens here (judge.verdict_texts / "
            "judge.score_texts) or change judge.verdict_prefix"
        )


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece ``.model`` file (e.g. Mistral's or Llama-2's ``tokenizer.model``)."""

    def __init__(self, model_path: str | os.PathLike) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise DataError(f"SentencePiece model {path} does not exist (data.tokenizer_path)")
        self.name = str(path)
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(str(path))
        except (OSError, RuntimeError) as err:
            raise DataError(f"{path} is not a SentencePiece model file: {err}") from None
        self.vocab_size = self._sp.get_piece_size()
        bos, eos, pad = self._sp.bos_id(), self._sp.eos_id(), self._sp.pad_id()
        if eos < 0:
            raise DataError(f"SentencePiece model {path} defines no EOS id; responses need one")
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = eos
        self.pad_id = pad if pad >= 0 else eos
        self.unk_id = self._sp.unk_id()
        self.bos_text = self._sp.id_to_piece(bos) if bos >= 0 else None

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self._sp.encode(text)
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def __getstate__(self) -> dict:
        # SentencePieceProcessor is not picklable: worker processes reload the model file.
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"])


class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer directory (needs ``transformers``: ``pip install .[hf]``)."""

    def __init__(self, path: str | os.PathLike) -> None:
        try:
            from transformers import AutoTokenizer  # lazy: transformers is the optional [hf] extra
        except ImportError:
            raise DataError(
                "data.tokenizer_type=hf needs the transformers package: pip install "
                "'megatron-scir[hf]' (or use a SentencePiece model file)"
            ) from None
        if not Path(path).is_dir():
            raise DataError(f"Hugging Face tokenizer directory {path} does not exist")
        self.name = str(path)
        try:
            self._tok = AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as err:
            raise DataError(f"cannot load a Hugging Face tokenizer from {path}: {err}") from None
        tok = self._tok
        if tok.eos_token_id is None:
            raise DataError(f"tokenizer {path} defines no EOS token; responses need one")
        self.vocab_size = len(tok)
        self.bos_id = tok.bos_token_id
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.unk_id = tok.unk_token_id
        self.bos_text = tok.bos_token
        self._strip = {i for i in (self.bos_id, self.eos_id, self.pad_id) if i is not None}
        self._stop_ids = hf_stop_ids(tok, Path(path))

    @property
    def stop_ids(self) -> frozenset[int]:
        return self._stop_ids

    def encode(self, text: str, *, add_bos: bool = False) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False)
        return [self.bos_id, *ids] if add_bos and self.bos_id is not None else ids

    def decode(self, ids: Sequence[int]) -> str:
        kept = [int(i) for i in ids if int(i) not in self._strip]
        return self._tok.decode(kept, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def pieces(self, ids: Sequence[int]) -> list[str]:
        return self._tok.convert_ids_to_tokens([int(i) for i in ids])

    @property
    def chat_template(self) -> str | None:
        return self._tok.chat_template

    def apply_chat_template(self, prompt: str | list[dict[str, str]]) -> str:
        if not self.chat_template:
            return super().apply_chat_template(prompt)
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        return self._tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def __getstate__(self) -> dict:
        return {"name": self.name}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"])


_PROBE = "scir-end-of-turn-probe"
"""The assistant message rendered to find a chat template's end-of-turn token."""


def hf_stop_ids(tok, folder: Path) -> frozenset[int]:
    """The ids that end a response of the model whose tokenizer folder this is.

    The union of

    1. the tokenizer's EOS;
    2. ``eos_token_id`` (an int or a list) of the folder's ``generation_config.json``, or of its
       ``config.json`` when there is no generation config: what transformers' ``generate`` stops
       on (Llama-3 lists ``<|end_of_text|>``, ``<|eom_id|>`` and ``<|eot_id|>``);
    3. the chat template's end-of-turn token: a conversation of one user and one assistant
       message is rendered with the tokenizer's template, and when the text right after the
       assistant's message starts with a special token (an added token flagged special, or one
       of the tokenizer's special tokens; the longest when several match), that token's id
       (ChatML ``<|im_end|>``, Llama-3 ``<|eot_id|>``; ``</s>`` for Zephyr or Mistral, which is
       EOS). Text that is not a special token (a plain newline) adds nothing.

    Args:
        tok: The loaded ``transformers`` tokenizer.
        folder: Its directory (where ``generation_config.json`` lives).

    Raises:
        DataError: ``eos_token_id`` is not an int or a list of ints within the vocabulary.
    """
    ids = {tok.eos_token_id, *_configured_eos_ids(folder, len(tok))}
    end_of_turn = _template_end_of_turn_id(tok)
    if end_of_turn is not None:
        ids.add(end_of_turn)
    return frozenset(ids)


def _configured_eos_ids(folder: Path, vocab_size: int) -> list[int]:
    """``eos_token_id`` of ``generation_config.json`` (else ``config.json``), as a list."""
    for name in ("generation_config.json", "config.json"):
        file = folder / name
        if not file.is_file():
            continue
        try:
            config = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataError(f"{file} is not readable JSON: {err}") from None
        value = config.get("eos_token_id") if isinstance(config, dict) else None
        ids = [] if value is None else value if isinstance(value, list) else [value]
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool)]
        bad += [i for i in ids if isinstance(i, int) and not 0 <= i < vocab_size]
        if bad:
            raise DataError(
                f"{file}: eos_token_id {value!r} must be a token id or a list of token ids in "
                f"[0, {vocab_size}) (the tokenizer's vocabulary); {bad} are not: fix the file "
                "or remove the entries"
            )
        return ids
    return []


def _template_end_of_turn_id(tok) -> int | None:
    """The special token right after an assistant message in the rendered chat template."""
    from jinja2 import TemplateError  # lazy: comes with transformers, like the template

    if not tok.chat_template:
        return None
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _PROBE}]
    try:
        rendered = tok.apply_chat_template(messages, tokenize=False)
    except (TemplateError, TypeError, ValueError, KeyError) as err:  # raise_exception(...) too
        logger.warning(
            "tokenizer %s: the chat template cannot render a user and an assistant message "
            "(%s), so its end-of-turn token is not a stop id; EOS and generation_config.json's "
            "eos_token_id still are",
            tok.name_or_path,
            err,
        )
        return None
    if not isinstance(rendered, str) or _PROBE not in rendered:
        return None
    after = rendered[rendered.index(_PROBE) + len(_PROBE) :]
    special = {t.content: i for i, t in tok.added_tokens_decoder.items() if t.special}
    special |= dict(zip(tok.all_special_tokens, tok.all_special_ids, strict=True))
    matches = [text for text in special if text and after.startswith(text)]
    return special[max(matches, key=len)] if matches else None


def build_tokenizer(data: DataConfig) -> Tokenizer:
    """The tokenizer named by ``data.tokenizer_type`` and ``data.tokenizer_path``."""
    if not data.tokenizer_path:
        raise DataError(
            "data.tokenizer_path is not set: pass a SentencePiece .model file "
            "(data.tokenizer_type=sentencepiece) or a Hugging Face tokenizer directory "
            "(data.tokenizer_type=hf)"
        )
    if data.tokenizer_type == TokenizerType.HF:
        return HFTokenizer(data.tokenizer_path)
    return SentencePieceTokenizer(data.tokenizer_path)


def check_tokenizer_fits_model(tokenizer: Tokenizer, model: ModelConfig) -> None:
    """Fail early when the tokenizer produces ids the model's embedding cannot hold."""
    if tokenizer.vocab_size > model.vocab_size:
        raise DataError(
            f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but "
            f"model.vocab_size is {model.vocab_size}: set model.vocab_size={tokenizer.vocab_size}"
        )


def train_sentencepiece_bpe(corpus: Sequence[str], vocab_size: int, **options) -> bytes:
    """A SentencePiece BPE model of ``corpus``, serialised; shaped like Llama/Mistral's.

    unk=0, bos=1, eos=2, pad=3; identity normalisation and no whitespace folding (text
    round-trips); ``\\n`` and ``\\t`` are pieces; one thread, so the same call gives the same
    bytes. The model is returned, not written to a ``model_prefix`` (which SentencePiece would
    store inside the model, making it path-dependent). ``options`` add or override trainer
    arguments (``byte_fallback``, ``split_digits``, ``required_chars``, ...).
    """
    model = io.BytesIO()
    arguments = {
        "model_type": "bpe",
        "character_coverage": 1.0,
        "byte_fallback": False,
        "unk_id": 0,
        "bos_id": 1,
        "eos_id": 2,
        "pad_id": 3,
        "user_defined_symbols": ["\n", "\t"],
        "normalization_rule_name": "identity",
        "remove_extra_whitespaces": False,
        "hard_vocab_limit": False,
        "num_threads": 1,
        "minloglevel": 2,
    }
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        **(arguments | options),
    )
    return model.getvalue()
