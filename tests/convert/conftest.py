"""Tiny random HF models shared by the conversion tests (built from configs, no downloads).

``hf_llama_dir`` is the hard case of every check: GQA (4 query heads, 2 KV groups), a head dim
(32) different from hidden/heads (16), Llama-3.1 RoPE scaling, a vocabulary (300) that is no
multiple of the padding unit (64 × TP), sharded safetensors with an index, tokenizer files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_scir.testing.hf import tiny_hf_llama, tiny_hf_mistral, tiny_hf_qwen2, tiny_hf_qwen3

LLAMA_VOCAB = 300
LLAMA3_ROPE = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf") / "llama"
    tiny_hf_llama(
        out,
        vocab_size=LLAMA_VOCAB,
        head_dim=32,
        llama3_rope_scaling=LLAMA3_ROPE,
        max_shard_size="60KB",
        tokenizer=True,
    )
    return out


@pytest.fixture(scope="session")
def hf_mistral_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mistral-7B-v0.3-shaped, but with one KV head (multi-query attention)."""
    out = tmp_path_factory.mktemp("hf") / "mistral"
    tiny_hf_mistral(out, num_kv_heads=1, seed=1)
    return out


@pytest.fixture(scope="session")
def hf_tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama-3.2-1B-like: input embeddings shared with the output layer (no lm_head tensor);
    the vocabulary (300) is padded as ``hf_llama_dir``'s."""
    out = tmp_path_factory.mktemp("hf") / "tied"
    tiny_hf_llama(out, vocab_size=LLAMA_VOCAB, tie_word_embeddings=True, seed=2, tokenizer=True)
    return out


@pytest.fixture(scope="session")
def hf_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2.5-0.5B-like: q/k/v biases, tied embeddings, GQA (4 heads / 2 groups), vocab 300."""
    out = tmp_path_factory.mktemp("hf") / "qwen2"
    tiny_hf_qwen2(out, vocab_size=LLAMA_VOCAB, seed=3, tokenizer=True)
    return out


@pytest.fixture(scope="session")
def hf_qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3-like: QK-norm, head dim 32 ≠ 64/4, untied, GQA (4 heads / 2 groups), vocabulary 300."""
    out = tmp_path_factory.mktemp("hf") / "qwen3"
    tiny_hf_qwen3(out, vocab_size=LLAMA_VOCAB, head_dim=32, seed=4, tokenizer=True)
    return out


@pytest.fixture(scope="session")
def tokens() -> torch.Tensor:
    """``[2, 12]`` ids valid for both models (vocabularies 300 and 256)."""
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(11))
