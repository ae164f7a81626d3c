"""Tiny random Hugging Face Llama/Mistral/Qwen2/Qwen3 models built from a config (no downloads),
for tests.

    model = tiny_hf_llama(tmp_path / "llama", vocab_size=300, head_dim=32)   # saved there too
    model = tiny_hf_qwen3(tmp_path / "qwen3", head_dim=32)                   # QK-norm

Every tensor is random, norms included (``1 + 0.1·N(0, 1)``; transformers initialises them to one,
which would hide a swapped norm), with ``weight_std`` large enough that a wrong mapping moves the
logits by whole units. :func:`mcore_logits` runs Megatron chunks of any TP/PP layout through
Megatron's own schedule and returns the full-vocabulary logits to compare with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from megatron_scir.testing.tokenizers import build_tiny_hf_tokenizer


def _randomize(model: torch.nn.Module, *, seed: int, weight_std: float) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=g, dtype=torch.float32)
            value = 1.0 + 0.1 * noise if name.endswith("norm.weight") else weight_std * noise
            param.copy_(value.to(param.dtype))


def _build(config, out_dir, *, seed, weight_std, max_shard_size, tokenizer):
    from transformers import AutoModelForCausalLM  # lazy: transformers is the optional [hf] extra

    model = AutoModelForCausalLM.from_config(config, dtype=config.dtype or torch.float32)
    _randomize(model, seed=seed, weight_std=weight_std)
    model.eval()
    if out_dir is not None:
        model.save_pretrained(str(out_dir), max_shard_size=max_shard_size or "5GB")
        if tokenizer:
            build_tiny_hf_tokenizer(out_dir, vocab_size=min(config.vocab_size, 256))
    return model


LLAMA_SHAPES = {
    # random Llama shapes of the benchmarks, as tiny_hf_llama(**shape) keywords
    # the tiny preset's model
    "tiny": dict(
        vocab_size=256,
        hidden_size=96,
        intermediate_size=256,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
    ),
    # the shape the "Step efficiency" issue measured (~59M parameters)
    "small": dict(
        vocab_size=32000,
        hidden_size=512,
        intermediate_size=1408,
        num_layers=8,
        num_heads=8,
        num_kv_heads=8,
    ),
    # ~0.3B, GQA
    "medium": dict(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=2816,
        num_layers=16,
        num_heads=16,
        num_kv_heads=8,
    ),
    # ~1B Llama (PLATFORM.md's generation numbers used an 886M shape of this family)
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_layers=16,
        num_heads=32,
        num_kv_heads=8,
    ),
}


SHAPE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=160,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    max_position_embeddings=2048,
)
"""The shape every builder takes as keywords (``**shape``), with these defaults."""


def _decoder(
    config_class: str,
    out_dir: str | Path | None,
    shape: dict,
    *,
    rope: dict,
    dtype: torch.dtype,
    seed: int,
    weight_std: float,
    tokenizer: bool,
    max_shard_size: str | None = None,
    **family,
):
    """Build, randomise and (with ``out_dir``) save a transformers ``config_class`` model:
    ``shape`` over :data:`SHAPE`, ``family`` the family's own config fields."""
    import transformers  # lazy: transformers is the optional [hf] extra

    unknown = set(shape) - set(SHAPE)
    if unknown:
        raise TypeError(f"unknown shape keywords {sorted(unknown)}; expected some of {list(SHAPE)}")
    m = {**SHAPE, **shape}
    config = getattr(transformers, config_class)(
        vocab_size=m["vocab_size"],
        hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"],
        num_hidden_layers=m["num_layers"],
        num_attention_heads=m["num_heads"],
        num_key_value_heads=m["num_kv_heads"],
        max_position_embeddings=m["max_position_embeddings"],
        rope_parameters=rope,
        dtype=dtype,
        **family,
    )
    return _build(
        config,
        out_dir,
        seed=seed,
        weight_std=weight_std,
        max_shard_size=max_shard_size,
        tokenizer=tokenizer,
    )


def _default_rope(theta: float) -> dict:
    return {"rope_theta": theta, "rope_type": "default"}


def _head_dim(shape: dict) -> int:
    m = {**SHAPE, **shape}
    return m["hidden_size"] // m["num_heads"]


def tiny_hf_llama(
    out_dir: str | Path | None = None,
    *,
    head_dim: int | None = None,
    rope_theta: float = 10000.0,
    llama3_rope_scaling: dict | None = None,
    tie_word_embeddings: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    weight_std: float = 0.1,
    max_shard_size: str | None = None,
    tokenizer: bool = False,
    **shape: int,
):
    """A random ``LlamaForCausalLM`` (GQA by default), saved to ``out_dir`` when given.

    Args:
        out_dir: where to ``save_pretrained`` (safetensors; sharded below ``max_shard_size``).
        head_dim: None for ``hidden_size // num_heads``; another value tests ``kv_channels``.
        llama3_rope_scaling: e.g. ``{"factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}`` (Llama-3.1).
        tokenizer: also write a tiny HF tokenizer (files to copy through a conversion).
        shape: :data:`SHAPE` keywords (``vocab_size``, ``hidden_size``, ``num_layers``, …).

    Returns:
        The model in eval mode.
    """
    rope = _default_rope(rope_theta)
    if llama3_rope_scaling is not None:
        rope = {"rope_theta": rope_theta, "rope_type": "llama3", **llama3_rope_scaling}
    return _decoder(
        "LlamaConfig",
        out_dir,
        shape,
        rope=rope,
        dtype=dtype,
        seed=seed,
        weight_std=weight_std,
        tokenizer=tokenizer,
        max_shard_size=max_shard_size,
        head_dim=head_dim or _head_dim(shape),
        rms_norm_eps=1e-5,
        tie_word_embeddings=tie_word_embeddings,
    )


def tiny_hf_mistral(
    out_dir: str | Path | None = None,
    *,
    rope_theta: float = 1_000_000.0,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    weight_std: float = 0.1,
    tokenizer: bool = False,
    **shape: int,
):
    """A random ``MistralForCausalLM`` shaped like Mistral-7B-v0.3 (no sliding window)."""
    return _decoder(
        "MistralConfig",
        out_dir,
        shape,
        rope=_default_rope(rope_theta),
        dtype=dtype,
        seed=seed,
        weight_std=weight_std,
        tokenizer=tokenizer,
        head_dim=_head_dim(shape),
        sliding_window=None,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
    )


def tiny_hf_qwen2(
    out_dir: str | Path | None = None,
    *,
    rope_theta: float = 1_000_000.0,
    tie_word_embeddings: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    weight_std: float = 0.1,
    tokenizer: bool = False,
    **shape: int,
):
    """A random ``Qwen2ForCausalLM`` shaped like Qwen2.5-0.5B: biases on q/k/v (random like the
    weights), tied embeddings, no sliding window. Saved to ``out_dir`` when given."""
    return _decoder(
        "Qwen2Config",
        out_dir,
        shape,
        rope=_default_rope(rope_theta),
        dtype=dtype,
        seed=seed,
        weight_std=weight_std,
        tokenizer=tokenizer,
        use_sliding_window=False,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
    )


def tiny_hf_qwen3(
    out_dir: str | Path | None = None,
    *,
    head_dim: int = 32,
    rope_theta: float = 1_000_000.0,
    tie_word_embeddings: bool = False,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    weight_std: float = 0.1,
    tokenizer: bool = False,
    **shape: int,
):
    """A random ``Qwen3ForCausalLM``: QK-norm (``q_norm`` / ``k_norm`` over ``head_dim``, random
    like every norm), its own ``head_dim`` (Qwen3's 128 ≠ hidden/heads), no biases, no sliding
    window. Saved to ``out_dir`` when given."""
    return _decoder(
        "Qwen3Config",
        out_dir,
        shape,
        rope=_default_rope(rope_theta),
        dtype=dtype,
        seed=seed,
        weight_std=weight_std,
        tokenizer=tokenizer,
        use_sliding_window=False,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tie_word_embeddings,
        head_dim=head_dim,
        attention_bias=False,
    )


def hf_logits(model_or_dir, tokens: torch.Tensor) -> torch.Tensor:
    """Logits ``[b, s, V]`` of an HF model (or folder, loaded in float32) for ``tokens [b, s]``."""
    if isinstance(model_or_dir, (str, Path)):
        from transformers import AutoModelForCausalLM  # lazy: the optional [hf] extra

        model_or_dir = AutoModelForCausalLM.from_pretrained(str(model_or_dir), dtype=torch.float32)
    with torch.no_grad():
        return model_or_dir.eval()(tokens).logits.float()


def mcore_logits(chunks: Sequence[torch.nn.Module], tokens: torch.Tensor) -> torch.Tensor | None:
    """Full-vocabulary logits ``[b, s, V_padded]`` of Megatron chunks for ``tokens [b, s]``.

    Runs one micro-batch through ``get_forward_backward_func`` (forward only), so it works for
    every TP/PP layout. Returns the logits (gathered over TP) on the last pipeline stage's ranks
    and None on the others.
    """
    from megatron.core.pipeline_parallel import get_forward_backward_func  # lazy: Megatron-Core
    from megatron.core.tensor_parallel import (  # lazy: Megatron-Core
        gather_from_tensor_model_parallel_region,
    )

    b, s = tokens.shape
    position_ids = torch.arange(s).expand(b, s)
    result: dict[str, torch.Tensor] = {}

    def forward_step(data_iterator, model):
        next(data_iterator)
        output = model(tokens, position_ids, None)

        def loss_func(logits):
            result["logits"] = gather_from_tensor_model_parallel_region(logits).detach().float()
            return logits.sum() * 0.0, {}

        return output, loss_func

    iterators = [iter([None]) for _ in chunks]
    with torch.no_grad():
        get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iterators if len(chunks) > 1 else iterators[0],
            model=list(chunks),
            num_microbatches=1,
            seq_length=s,
            micro_batch_size=b,
            forward_only=True,
        )
    return result.get("logits")
