"""Divergences and entropies of Bernoulli distributions given as log-probabilities (SCIR_SPEC §3).

A Bernoulli "y1 ≻ y2" is carried as ``(log p, log(1 − p))``: both computed directly from logits
with ``logsigmoid``/``logaddexp``, so neither saturates to ``log 0`` for finite inputs, and
nothing is clamped. Probabilities are only formed as ``exp(log p)`` where they multiply a
finite log term.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from megatron_scir.config.choices import Divergence

__all__ = [
    "Bernoulli",
    "probability_difference",
    "kl_divergence",
    "divergence",
    "entropy",
]

_LOG_2 = math.log(2.0)


class Bernoulli(NamedTuple):
    """A batch of Bernoulli distributions over "y1 ≻ y2" in log space.

    Attributes:
        log_p: ``[n]`` log P(y1 ≻ y2).
        log_q: ``[n]`` log P(y2 ≻ y1) = log(1 − P), computed independently (not ``log1p(-p)``).
    """

    log_p: torch.Tensor
    log_q: torch.Tensor

    @property
    def p(self) -> torch.Tensor:
        return self.log_p.exp()

    @property
    def q(self) -> torch.Tensor:
        return self.log_q.exp()

    @property
    def logit(self) -> torch.Tensor:
        return self.log_p - self.log_q

    def centered(self) -> torch.Tensor:
        """``P − ½`` (sign = which response this model prefers, size = its confidence)."""
        return 0.5 * (self.p - self.q)

    def detach(self) -> Bernoulli:
        return Bernoulli(self.log_p.detach(), self.log_q.detach())

    def where(self, condition: torch.Tensor, other: Bernoulli) -> Bernoulli:
        """Per pair: ``self`` where ``condition`` else ``other`` (gradients follow the choice)."""
        return Bernoulli(
            torch.where(condition, self.log_p, other.log_p),
            torch.where(condition, self.log_q, other.log_q),
        )


def probability_difference(a: Bernoulli, b: Bernoulli) -> torch.Tensor:
    """``P_a − P_b`` without cancellation when both are close to 1.

    Near 1 the probabilities round to 1.0 in float32 while ``1 − P`` is still exact, so the
    difference is taken on the smaller side: ``P_a − P_b = (1 − P_b) − (1 − P_a)``.
    """
    upper = (a.log_p + b.log_p) > (a.log_q + b.log_q)
    return torch.where(upper, b.q - a.q, a.p - b.p)


def kl_divergence(a: Bernoulli, b: Bernoulli) -> torch.Tensor:
    """KL(a ‖ b) = p_a (log p_a − log p_b) + q_a (log q_a − log q_b), ``[n]`` nats."""
    return a.p * (a.log_p - b.log_p) + a.q * (a.log_q - b.log_q)


def _mixture(a: Bernoulli, b: Bernoulli) -> Bernoulli:
    """M = ½(a + b) in log space."""
    return Bernoulli(
        torch.logaddexp(a.log_p, b.log_p) - _LOG_2, torch.logaddexp(a.log_q, b.log_q) - _LOG_2
    )


def _sym_kl(judge: Bernoulli, implicit: Bernoulli) -> torch.Tensor:
    # ½[KL(P_G‖P_I) + KL(P_I‖P_G)] = ½ (P_G − P_I)(logit P_G − logit P_I) for Bernoullis.
    return 0.5 * probability_difference(judge, implicit) * (judge.logit - implicit.logit)


def _js(judge: Bernoulli, implicit: Bernoulli) -> torch.Tensor:
    mixture = _mixture(judge, implicit)
    return 0.5 * (kl_divergence(judge, mixture) + kl_divergence(implicit, mixture))


def _mse(judge: Bernoulli, implicit: Bernoulli) -> torch.Tensor:
    return probability_difference(judge, implicit).square()


_DIVERGENCES = {Divergence.SYM_KL: _sym_kl, Divergence.JS: _js, Divergence.MSE: _mse}


def divergence(
    judge: Bernoulli, implicit: Bernoulli, *, kind: Divergence = Divergence.SYM_KL
) -> torch.Tensor:
    """D(P_G, P_I) per pair (SCIR_SPEC §3).

    ``sym_kl``: ½[KL(P_G‖P_I) + KL(P_I‖P_G)], which for Bernoullis equals
    ½ (P_G − P_I)(logit P_G − logit P_I); ``js``: ½[KL(P_G‖M) + KL(P_I‖M)] with
    M = ½(P_G + P_I), in nats; ``mse``: (P_G − P_I)².

    Args:
        judge: P_G per pair (detach it first to make it a teacher).
        implicit: P_I per pair (detach it first to make it a teacher).
        kind: a :class:`~megatron_scir.config.choices.Divergence` (or its string).

    Returns:
        ``[n]`` float32 divergences, ``>= 0`` up to rounding.
    """
    return _DIVERGENCES[kind](judge, implicit)


def entropy(dist: Bernoulli) -> torch.Tensor:
    """H(p) = −p log p − (1 − p) log(1 − p), ``[n]`` nats (SCIR_SPEC §3, L_conf)."""
    return -(dist.p * dist.log_p + dist.q * dist.log_q)
