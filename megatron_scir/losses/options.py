"""The options of the SCIR and labelled losses as one frozen object, validated once.

:class:`LossOptions` gathers what ``scir_loss`` and ``labelled_pair_loss`` read from the config:
the ``scir`` section plus ``judge.position_debias`` (how P_G combines the two judge orders).
The closed choices are converted to their :mod:`megatron_scir.config.choices` enums here, once;
the loss functions then branch on enum members and never re-check a string.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from megatron_scir.config.choices import (
    ConsistencyGrad,
    Divergence,
    ImplicitReference,
    PairSelection,
    PositionDebias,
    PrefLoss,
    PrefNormalization,
    choices,
)

if TYPE_CHECKING:
    from megatron_scir.config import Config

__all__ = ["LossOptions"]

# The fields that hold a closed choice, and its enum.
_CHOICE_FIELDS = {
    "divergence": Divergence,
    "consistency_grad": ConsistencyGrad,
    "pref_loss": PrefLoss,
    "pref_normalization": PrefNormalization,
    "position_debias": PositionDebias,
    "implicit_reference": ImplicitReference,
    "selection": PairSelection,
}


@dataclass(frozen=True, kw_only=True)
class LossOptions:
    """Options of the SCIR loss (SCIR_SPEC §1–§5) and of the labelled ``dpo``/``srlm`` loss.

    Defaults are the spec's (and the config's). Choice fields accept their enum member or its
    string and always hold the member after construction.

    Raises:
        ValueError: a choice field holds a value outside its enum (named with the allowed
            values).
    """

    beta: float = 0.1
    """β of the implicit reward r(y) = β·(log πθ − log πref) (``scir.beta``)."""
    length_normalize: bool = False
    """Divide each implicit log-ratio by its response length (``scir.length_normalize``)."""
    consistency_weight: float = 1.0
    """λ_cons (``scir.consistency_weight``)."""
    confidence_weight: float = 0.1
    """λ_conf (``scir.confidence_weight``)."""
    divergence: Divergence = Divergence.SYM_KL
    """D of L_cons (``scir.divergence``)."""
    consistency_grad: ConsistencyGrad = ConsistencyGrad.BOTH
    """Which side L_cons trains (``scir.consistency_grad``)."""
    margin: float = 0.0
    """m: minimum confidence |P − ½| of both models for a consistent pair (``scir.margin``)."""
    tie_eps: float = 1e-4
    """Predictions within this of ½ carry no label (``scir.tie_eps``)."""
    pref_loss: PrefLoss = PrefLoss.DPO
    """ℓ_pref: dpo or ipo (``scir.pref_loss``)."""
    pref_normalization: PrefNormalization = PrefNormalization.PAIRS
    """÷ all pairs or ÷ the selected pairs (``scir.pref_normalization``)."""
    sft_weight: float = 0.0
    """λ_sft of the SFT term on the chosen response (``scir.sft_weight``; 0 = off)."""
    position_debias: PositionDebias = PositionDebias.MEAN_PROB
    """How P_G combines the two pairwise judge orders (``judge.position_debias``)."""
    implicit_reference: ImplicitReference = ImplicitReference.CURRENT
    """P_I against M_t or against M_{t−1} (``scir.implicit_reference``)."""
    selection: PairSelection = PairSelection.CONSISTENT
    """The pairs of the DPO term: the consistent ones, or all the judge labels
    (``scir.selection``)."""

    def __post_init__(self) -> None:
        for name, enum in _CHOICE_FIELDS.items():
            value = getattr(self, name)
            if value not in choices(enum):
                raise ValueError(f"{name}={value!r} is not one of {choices(enum)}")
            object.__setattr__(self, name, enum(value))

    @classmethod
    def from_config(cls, cfg: Config) -> LossOptions:
        """The options of a run: the ``scir`` section and ``judge.position_debias``."""
        names = {f.name for f in dataclasses.fields(cls)} - {"position_debias"}
        return cls(
            **{name: getattr(cfg.scir, name) for name in names},
            position_debias=cfg.judge.position_debias,
        )
