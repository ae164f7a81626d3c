"""Tiny real tokenizers trained locally (no downloads), for tests, benchmarks and the demo.

- :func:`train_tiny_sentencepiece`: a 256-piece SentencePiece BPE model (fits the ``tiny`` preset's
  ``model.vocab_size: 256``), shaped like Llama/Mistral's: unk=0, bos=1, eos=2 (plus pad=3),
  dummy-prefix ``▁`` so "A" and "▁A" differ, identity normalisation, ``\\n`` and ``\\t`` as
  pieces. Byte fallback needs 256 byte pieces on top of the characters, more than 256 pieces in
  all, so the 256-piece model covers every printable ASCII character instead (any ASCII text
  round-trips; other characters become unk). ``byte_fallback=True`` with ``vocab_size >= 512``
  gives a model that encodes any text losslessly.
- :func:`build_tiny_hf_tokenizer`: a Hugging Face tokenizer directory (``tokenizers`` BPE with a
  Metaspace pre-tokenizer, ``<s>``/``</s>``/``<pad>``, and a Zephyr-style chat template with
  ``<|user|>`` / ``<|assistant|>`` special tokens).

Both are deterministic: the same call gives byte-identical files.
"""

from __future__ import annotations

import os
import string
from pathlib import Path

from megatron_scir.config.schema import PAIRWISE_TEMPLATE, POINTWISE_TEMPLATE
from megatron_scir.data.tokenizer import train_sentencepiece_bpe

# Text the tiny models are trained on: chat turns, the default judge templates (so judge prompts
# stay short in tokens) and every printable ASCII character (so any ASCII text encodes).
_CORPUS = [
    "User: What is the capital of France?",
    "Assistant: The capital of France is Paris.",
    "User: Write a short poem about the sea.",
    "Assistant: The sea is wide and blue, and the waves roll in to the shore.",
    "User: How do I sort a list in Python?",
    "Assistant: Use the sorted function, or call the sort method of the list.",
    "Which response is better? Answer with a single letter, A or B.",
    "The score is 0 1 2 3 4 5 6 7 8 9 out of 5 points.",
    "The quick brown fox jumps over the lazy dog. A cat sat on the mat.",
    "Please explain why the sky is blue in simple words for a child.",
    "Here is an answer to the question, with a few more words in it.",
    *PAIRWISE_TEMPLATE.splitlines(),
    *POINTWISE_TEMPLATE.splitlines(),
    string.printable.strip(),
]
TINY_HF_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>\n{{ message['content'] }}\n"
    "{% else %}<|assistant|>\n{{ message['content'] }}{{ eos_token }}\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tiny_sentencepiece(
    out_dir: str | os.PathLike, vocab_size: int = 256, *, byte_fallback: bool = False
) -> Path:
    """Train a tiny SentencePiece BPE model; returns the ``.model`` file path.

    Args:
        out_dir: Directory the model is written to (``tiny_sp_<vocab_size>.model``).
        vocab_size: Number of pieces (ids 0..vocab_size-1).
        byte_fallback: Encode characters outside the vocabulary as UTF-8 byte pieces
            (needs ``vocab_size >= 512``).
    """
    if byte_fallback and vocab_size < 512:
        raise ValueError(f"byte_fallback needs vocab_size >= 512 (got {vocab_size})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"tiny_sp_{vocab_size}{'_bytes' if byte_fallback else ''}.model"
    model = train_sentencepiece_bpe(_CORPUS * 4, vocab_size, byte_fallback=byte_fallback)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(model)
    os.replace(tmp, path)
    return path


def build_tiny_hf_tokenizer(out_dir: str | os.PathLike, vocab_size: int = 256) -> Path:
    """Train and save a tiny Hugging Face tokenizer with a chat template; returns the directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # lazy: [hf] extra
    from transformers import PreTrainedTokenizerFast  # lazy: the optional [hf] extra

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>"],
        initial_alphabet=list(string.printable),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = TINY_HF_CHAT_TEMPLATE
    out = Path(out_dir)
    fast.save_pretrained(str(out))
    return out
