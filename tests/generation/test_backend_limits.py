"""The limits every generation backend checks before a batch (generation.backend.check_batch)."""

from __future__ import annotations

import pytest

from megatron_scir.generation.backend import check_batch
from megatron_scir.generation.settings import SamplingSettings

LIMITS = dict(max_batch_size=2, max_prompt_length=4, max_new_tokens=8)


def test_a_batch_within_the_limits_passes_and_each_limit_is_named():
    check_batch([[1, 2], [3, 4, 5, 6]], SamplingSettings(max_new_tokens=8), **LIMITS)
    with pytest.raises(ValueError, match="3 prompts for a batch of at most 2"):
        check_batch([[1]] * 3, SamplingSettings(max_new_tokens=8), **LIMITS)
    with pytest.raises(ValueError, match="no prompts|0 prompts"):
        check_batch([], SamplingSettings(max_new_tokens=8), **LIMITS)
    with pytest.raises(ValueError, match=r"\[1, 4\] \(longest: 5\)"):
        check_batch([[1] * 5], SamplingSettings(max_new_tokens=8), **LIMITS)
    with pytest.raises(ValueError, match=r"\[1, 4\]"):
        check_batch([[]], SamplingSettings(max_new_tokens=8), **LIMITS)
    with pytest.raises(ValueError, match="max_new_tokens 9 exceeds the backend's 8"):
        check_batch([[1]], SamplingSettings(max_new_tokens=9), **LIMITS)
