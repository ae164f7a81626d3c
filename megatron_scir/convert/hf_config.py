"""Hugging Face ``config.json`` ↔ :class:`ModelConfig` for Llama, Mistral, Qwen2/Qwen2.5 and Qwen3.

Each supported architecture (:data:`ARCHITECTURES`) is the Llama decoder plus Megatron-Core
options: Qwen2 adds a bias to the q/k/v projections (``add_qkv_bias``), Qwen3 RMSNorms every query
and key head (``qk_layernorm``). Reads both spellings of RoPE: transformers 4.x (``rope_theta`` +
``rope_scaling``) and 5.x (``rope_parameters``); writes the 4.x spelling, which both versions
read. Anything the Megatron model would compute differently is refused with the field, the
expected and the found value: another architecture (MoE, Gemma, ...), biases the architecture does
not have (``attention_bias``, ``mlp_bias``), an activation other than SiLU, a sliding window
(Qwen's ``use_sliding_window``, ``layer_types`` other than full attention, a Mistral
``sliding_window`` shorter than the context), RoPE scaling other than Llama-3.1's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from megatron_scir.config import Config, ModelConfig, load_config, validate
from megatron_scir.config.choices import Dtype, choices
from megatron_scir.config.derived import fit_budgets
from megatron_scir.config.load import override_keys
from megatron_scir.convert.errors import ConversionError


@dataclass(frozen=True)
class Architecture:
    """One Hugging Face architecture in :class:`ModelConfig` terms."""

    model_type: str
    """config.json's ``model_type``."""
    add_qkv_bias: bool = False
    """Its q/k/v projections have a bias (and nothing else has)."""
    qk_layernorm: bool = False
    """It RMSNorms every query and key head (``q_norm`` / ``k_norm``)."""
    fixed: tuple[tuple[str, Any], ...] = ()
    """config.json fields that must have one value, also their default when absent: (field,
    value)."""
    window_flag: bool = False
    """``sliding_window`` applies only under ``use_sliding_window`` (Qwen); otherwise whenever
    it is shorter than the context (Mistral)."""


_NO_BIAS = (("attention_bias", False), ("mlp_bias", False))
ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("llama", fixed=_NO_BIAS),
    "MistralForCausalLM": Architecture("mistral", fixed=_NO_BIAS),
    # Qwen2's q/k/v biases are not a config field: every Qwen2 model has them
    "Qwen2ForCausalLM": Architecture("qwen2", add_qkv_bias=True, window_flag=True),
    # attention_bias would add the o_proj bias too, which Megatron's add_qkv_bias does not
    "Qwen3ForCausalLM": Architecture(
        "qwen3", qk_layernorm=True, fixed=(("attention_bias", False),), window_flag=True
    ),
}
"""The architectures the converter reads, by ``architectures[0]`` of config.json."""
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
_LLAMA3_ROPE = {
    "factor": "rope_scaling_factor",
    "low_freq_factor": "rope_low_freq_factor",
    "high_freq_factor": "rope_high_freq_factor",
    "original_max_position_embeddings": "rope_original_max_position_embeddings",
}


# model fields the exported config.json takes from the checkpoint, not from the stored template
_EXPORT_DECIDES = ("params_dtype", "share_embeddings_and_output_weights")


def read_hf_config(hf_dir: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a Hugging Face model folder."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise ConversionError(f"{hf_dir} is not a Hugging Face model folder: no config.json")
    return json.loads(path.read_text())


def is_tied(hf: dict[str, Any]) -> bool:
    """Whether the model shares its input embeddings with ``lm_head`` (absent: untied, as
    ``LlamaConfig``, ``MistralConfig``, ``Qwen2Config`` and ``Qwen3Config`` default)."""
    return bool(hf.get("tie_word_embeddings", False))


def _field(hf: dict[str, Any], key: str, source: str) -> Any:
    if hf.get(key) is None:
        raise ConversionError(f"{source}: missing field {key!r}")
    return hf[key]


def _expect(hf: dict[str, Any], key: str, expected: Any, default: Any, source: str) -> None:
    found = hf.get(key, default)
    if found != expected:
        arch = (hf.get("architectures") or ["this architecture"])[0]
        raise ConversionError(
            f"{source}: field {key}: expected {expected!r}, found {found!r} (not supported for "
            f"{arch} by the converter)"
        )


def _check_full_attention(hf: dict[str, Any], arch: Architecture, source: str) -> int:
    """Refuse any sliding-window attention; returns ``max_position_embeddings``."""
    max_pos = int(_field(hf, "max_position_embeddings", source))
    _expect(hf, "use_sliding_window", False, False, source)
    other = sorted(set(hf.get("layer_types") or ()) - {"full_attention"})
    if other:
        raise ConversionError(
            f"{source}: field layer_types: expected only 'full_attention', found {other}: "
            "Megatron's local attention has no sliding window"
        )
    window = None if arch.window_flag else hf.get("sliding_window")
    if window is not None and window < max_pos:
        raise ConversionError(
            f"{source}: field sliding_window: expected null (or >= max_position_embeddings "
            f"{max_pos}), found {window}: Megatron's local attention has no sliding window "
            "(Mistral-7B-v0.1 has one; v0.3 does not)"
        )
    return max_pos


def _rope_fields(hf: dict[str, Any], source: str) -> dict[str, Any]:
    params = dict(hf.get("rope_parameters") or {})
    scaling = hf.get("rope_scaling") or {}
    theta = params.get("rope_theta", hf.get("rope_theta"))
    if theta is None:
        raise ConversionError(f"{source}: missing field 'rope_theta' (or rope_parameters)")
    kind_source = params if "rope_type" in params or "type" in params else scaling
    kind = kind_source.get("rope_type", kind_source.get("type", "default"))
    fields: dict[str, Any] = {"rotary_base": float(theta), "rope_scaling": kind == "llama3"}
    if kind in (None, "default"):
        return fields
    if kind != "llama3":
        raise ConversionError(
            f"{source}: field rope_scaling.rope_type: expected 'default' or 'llama3', found "
            f"{kind!r} (not supported by the converter)"
        )
    for hf_key, ours in _LLAMA3_ROPE.items():
        value = kind_source.get(hf_key)
        if value is None:
            raise ConversionError(f"{source}: llama3 RoPE scaling lacks field {hf_key!r}")
        fields[ours] = int(value) if ours.endswith("embeddings") else float(value)
    return fields


def model_fields_from_hf(hf: dict[str, Any], *, source: str = "config.json") -> dict[str, Any]:
    """The :class:`ModelConfig` fields a Hugging Face config fixes (shape, qkv bias, QK-norm,
    tied embeddings, RoPE, eps, dtype).

    Raises:
        ConversionError: unsupported architecture or feature, or a missing field; the message
            names the field, the expected and the found value.
    """
    archs = hf.get("architectures") or []
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        raise ConversionError(
            f"{source}: field architectures: expected one of "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}, found {archs!r}"
        )
    arch = ARCHITECTURES[archs[0]]
    _expect(hf, "hidden_act", "silu", "silu", source)
    for key, value in arch.fixed:
        _expect(hf, key, value, value, source)
    max_pos = _check_full_attention(hf, arch, source)
    heads = int(_field(hf, "num_attention_heads", source))
    hidden = int(_field(hf, "hidden_size", source))
    dtype = hf.get("dtype") or hf.get("torch_dtype") or "float32"
    if dtype not in choices(Dtype):  # transformers spells dtypes as torch does: no aliases
        raise ConversionError(
            f"{source}: field dtype: expected one of {list(choices(Dtype))}, found {dtype!r}"
        )
    return {
        "num_layers": int(_field(hf, "num_hidden_layers", source)),
        "hidden_size": hidden,
        "ffn_hidden_size": int(_field(hf, "intermediate_size", source)),
        "num_attention_heads": heads,
        "num_query_groups": int(hf.get("num_key_value_heads") or heads),
        "kv_channels": int(hf.get("head_dim") or hidden // heads),
        "add_qkv_bias": arch.add_qkv_bias,
        "qk_layernorm": arch.qk_layernorm,
        "vocab_size": int(_field(hf, "vocab_size", source)),
        "share_embeddings_and_output_weights": is_tied(hf),
        "max_position_embeddings": max_pos,
        "layernorm_epsilon": float(_field(hf, "rms_norm_eps", source)),
        "params_dtype": dtype,
        **_rope_fields(hf, source),
    }


def config_from_hf(
    hf_dir: str | Path,
    base: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    fit_budgets_to_model: bool = False,
) -> Config:
    """A full :class:`Config` whose model section comes from the folder's ``config.json``.

    Args:
        hf_dir: Hugging Face model folder.
        base: preset or YAML for everything but the model shape (None: the schema defaults).
        overrides: ``a.b=c`` overrides; those of fields ``config.json`` fixes are refused,
            except ``model.params_dtype`` (the dtype to train in).
        fit_budgets_to_model: the budgets not among ``overrides`` shrink to the model's
            positions (:func:`~megatron_scir.config.derived.fit_budgets`; the ``chat`` preset).
    """
    source = f"{hf_dir}/config.json"
    fields = model_fields_from_hf(read_hf_config(hf_dir), source=source)
    overrides = list(overrides)
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+").strip()
        name = key.removeprefix("model.")
        if key.startswith("model.") and name in fields and name != "params_dtype":
            raise ConversionError(
                f"override {item!r}: model.{name} comes from {source} ({fields[name]!r}); "
                "remove the override"
            )
        if key == "model.params_dtype":
            fields.pop("params_dtype")
    cfg = load_config(base, overrides, check_layout=False)  # checked with the HF model below
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **fields))
    if fit_budgets_to_model:
        cfg = fit_budgets(cfg, keep=override_keys(overrides))
    validate(cfg)
    return cfg


def hf_config_dict(
    m: ModelConfig, *, dtype: str, template: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ``config.json`` of an exported model in ``dtype``.

    With ``template`` (the config.json stored at import) every field is kept, after checking that
    its model fields equal ``m``; the dtype and ``tie_word_embeddings`` are ``m``'s (a tied model
    imported before the weights could stay tied was trained untied: it exports untied). Without
    it, the architecture is the one :func:`export_architecture` names for ``m``.
    """
    if template is not None:
        stored = model_fields_from_hf(template, source="the checkpoint's hf/config.json")
        for name, value in stored.items():
            if name in _EXPORT_DECIDES:
                continue
            if getattr(m, name) != value:
                raise ConversionError(
                    f"the checkpoint's hf/config.json disagrees with its model config: "
                    f"model.{name} expected {getattr(m, name)!r}, found {value!r}"
                )
        out = dict(template)
        keys = [k for k in ("dtype", "torch_dtype") if k in template] or ["dtype"]
        out.update(dict.fromkeys(keys, dtype))
        out["tie_word_embeddings"] = m.share_embeddings_and_output_weights
        return out
    rope_scaling = None
    if m.rope_scaling:
        rope_scaling = {hf_key: getattr(m, ours) for hf_key, ours in _LLAMA3_ROPE.items()}
        rope_scaling["rope_type"] = "llama3"
    name = export_architecture(m)
    arch = ARCHITECTURES[name]
    window = {"use_sliding_window": False, "sliding_window": None} if arch.window_flag else {}
    return {
        "architectures": [name],
        "model_type": arch.model_type,
        "hidden_size": m.hidden_size,
        "intermediate_size": m.ffn_hidden_size,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_attention_heads,
        "num_key_value_heads": m.num_query_groups,
        "head_dim": m.head_dim,
        "vocab_size": m.vocab_size,
        "max_position_embeddings": m.max_position_embeddings,
        "rms_norm_eps": m.layernorm_epsilon,
        "rope_theta": m.rotary_base,
        "rope_scaling": rope_scaling,
        "hidden_act": "silu",
        **dict(arch.fixed),
        **window,
        "tie_word_embeddings": m.share_embeddings_and_output_weights,
        "torch_dtype": dtype,
    }


def export_architecture(m: ModelConfig) -> str:
    """The Hugging Face architecture a model without a stored config.json exports as: Qwen3 with
    ``qk_layernorm``, Qwen2 with ``add_qkv_bias``, Llama otherwise.

    Raises:
        ConversionError: both flags (Qwen3's ``attention_bias`` would add an o_proj bias too).
    """
    if m.qk_layernorm and m.add_qkv_bias:
        raise ConversionError(
            "model.add_qkv_bias=true with model.qk_layernorm=true has no Hugging Face "
            "architecture (Qwen3's attention_bias also adds an o_proj bias): export a model "
            "with one of them"
        )
    if m.qk_layernorm:
        return "Qwen3ForCausalLM"
    return "Qwen2ForCausalLM" if m.add_qkv_bias else "LlamaForCausalLM"
