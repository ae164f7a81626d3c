"""``sample_tokens`` draws from Megatron-Core's filtered distribution (its own ``TorchSampling``
filter is the reference), without a full sort where the nucleus lies among the top tokens."""

from __future__ import annotations

import pytest
import torch

from megatron_scir.generation import sampling
from megatron_scir.generation.sampling import sample_tokens

DRAWS = 40_000


def _megatron_probs(logits, *, temperature, top_k, top_p) -> torch.Tensor:
    from megatron.core.inference.sampling.torch_sampling import TorchSampling

    filtered = TorchSampling.filter_logits(logits, temperature, top_k, top_p)
    return filtered.softmax(-1)


def _frequencies(logits, **kwargs) -> torch.Tensor:
    rows = logits.expand(DRAWS, -1)
    draws = sample_tokens(rows, generator=torch.Generator().manual_seed(0), **kwargs)
    return torch.bincount(draws, minlength=logits.size(-1)).float() / DRAWS


LOGITS = {
    "peaked": torch.tensor([[4.0, 3.1, 2.5, 1.0, 0.2, -1.0, -2.0, -3.0, -4.0, -6.0]]),
    "flat": torch.tensor([[0.3, 0.2, 0.25, 0.1, 0.0, -0.1, 0.05, 0.15, -0.2, 0.12]]),
}


@pytest.mark.parametrize("shape", list(LOGITS))
@pytest.mark.parametrize(
    "setting",
    [
        dict(temperature=0.7, top_k=0, top_p=0.9),
        dict(temperature=1.0, top_k=0, top_p=0.5),
        dict(temperature=1.3, top_k=3, top_p=0.0),
        dict(temperature=0.8, top_k=0, top_p=0.0),
    ],
)
@pytest.mark.parametrize("candidates", [64, 2])  # 2: most rows fall back to the full sort
def test_draws_follow_megatrons_filtered_distribution(monkeypatch, shape, setting, candidates):
    monkeypatch.setattr(sampling, "NUCLEUS_CANDIDATES", candidates)
    logits = LOGITS[shape]
    expected = _megatron_probs(logits.clone(), **setting)[0]
    got = _frequencies(logits, **setting)
    assert torch.all(got[expected == 0] == 0)  # nothing outside Megatron's kept set
    assert (got - expected).abs().max() < 0.015, (got, expected)


def test_greedy_is_argmax_and_a_seed_repeats_its_draws():
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(1))
    greedy = sample_tokens(logits, temperature=1.0, top_k=1, top_p=0.0, generator=None)
    assert torch.equal(greedy, logits.argmax(-1))
    draw = [
        sample_tokens(
            logits, temperature=0.7, top_k=0, top_p=0.9,
            generator=torch.Generator().manual_seed(5),
        )
        for _ in range(2)
    ]
    assert torch.equal(draw[0], draw[1])


def test_masked_padding_is_never_drawn():
    logits = torch.zeros(DRAWS, 6)
    logits[:, 4:] = float("-inf")  # vocabulary padding
    draws = sample_tokens(
        logits, temperature=1.0, top_k=0, top_p=0.0, generator=torch.Generator().manual_seed(2)
    )
    assert int(draws.max()) < 4
