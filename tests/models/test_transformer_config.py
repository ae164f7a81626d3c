"""The Megatron TransformerConfig keeps the settings the SCIR output head relies on."""

from __future__ import annotations

import pytest

from megatron_scir.config import load_config


def test_transformer_config_never_fuses_weight_gradient_accumulation():
    from megatron_scir.models import transformer_config

    for preset in ("tiny", "llama3_70b_fp8"):
        assert transformer_config(load_config(preset)).gradient_accumulation_fusion is False


def test_a_config_with_fused_wgrad_accumulation_is_refused_because_the_judge_gradient_would_drop(
    monkeypatch,
):
    # Fused accumulation needs Megatron's CUDA extension, so no real config can turn it on here:
    # stand in a TransformerConfig that does, as a future option or Megatron default would.
    from megatron.core.transformer import transformer_config as megatron_config

    from megatron_scir.models import transformer_config

    class FusedConfig(megatron_config.TransformerConfig):
        def __post_init__(self) -> None:
            super().__post_init__()
            self.gradient_accumulation_fusion = True

    monkeypatch.setattr(megatron_config, "TransformerConfig", FusedConfig)
    with pytest.raises(AssertionError, match=r"logits_at applies the output weight with F\.linear"):
        transformer_config(load_config("tiny"))
