"""Sampling the next token from last-position logits: greedy, temperature, top-k, top-p.

The same distribution as Megatron-Core's ``TorchSampling`` (temperature, then top-k or the
nucleus: the smallest set of most likely tokens whose probability reaches ``top_p``, the token
that crosses it included), drawn at a fraction of its cost on a large vocabulary. Megatron's
sampler sorts the whole vocabulary of every row and calls ``torch.multinomial`` on it at every
step: with SmolLM2's 49,152 tokens and 32 rows that was 28 % of a CPU generation run
(``benchmarks/bench_generation.py --smollm2``). Here:

- the nucleus is looked for among the :data:`NUCLEUS_CANDIDATES` most likely tokens first
  (``topk``); only a row whose candidates hold less than ``top_p`` of the mass (a flat
  distribution) is sorted in full;
- the draw is an exponential race, ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)`` independent
  (token ``i`` wins with probability ``p_i / Σ p``), over the kept tokens only.

Both are exact: the kept set is the one Megatron keeps, and each kept token is drawn with its
renormalised probability. The draws come from the ``generator`` (seeded per batch by the
runner), so a seed gives the same tokens again; they are not Megatron's stream.
"""

from __future__ import annotations

import torch

NUCLEUS_CANDIDATES = 64
"""Tokens searched for the nucleus before a row falls back to sorting its whole vocabulary."""


def sample_tokens(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """One token id per row of ``logits [rows, vocab]``.

    Args:
        logits: Last-position logits (masked entries ``-inf``).
        temperature: Divides the logits (1.0: unchanged).
        top_k: Keep the k most likely tokens (0: off; 1: greedy, no draw).
        top_p: Nucleus threshold in (0, 1) (0 or 1: off). Not together with ``top_k > 1``.
        generator: Source of the draws.
    """
    if top_k == 1:
        return logits.argmax(-1)
    if top_k > 1 and 0 < top_p < 1:
        raise ValueError("top-k and top-p cannot both be set")
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if top_k > 1:
        values, index = logits.topk(min(top_k, logits.size(-1)), dim=-1)
        return index.gather(-1, _race(values.softmax(-1), generator)).squeeze(-1)
    probs = logits.softmax(-1)
    if not 0 < top_p < 1:
        return _race(probs, generator).squeeze(-1)
    return _nucleus(probs, top_p, generator)


def _nucleus(probs: torch.Tensor, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """Draw from each row's nucleus (Megatron's: token ``j`` of the sorted row is kept while the
    mass before it is at most ``top_p``)."""
    k = min(NUCLEUS_CANDIDATES, probs.size(-1))
    top, index = probs.topk(k, dim=-1)  # sorted, most likely first
    out = torch.empty(probs.size(0), dtype=torch.long, device=probs.device)
    inside = top.sum(-1) > top_p  # the crossing token is among the candidates
    for rows, (p, i) in (
        (inside, (top[inside], index[inside])),
        (~inside, probs[~inside].sort(-1, descending=True)),
    ):
        if p.size(0):
            kept = p * ((p.cumsum(-1) - p) <= top_p)
            out[rows] = i.gather(-1, _race(kept, generator)).squeeze(-1)
    return out


def _race(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[rows, 1]``: index ``i`` of each row with probability ``weights_i / Σ weights``."""
    noise = torch.empty_like(weights).exponential_(generator=generator)
    return (weights / noise).argmax(-1, keepdim=True)
