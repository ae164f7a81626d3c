"""Budgets a run cannot get wrong: what fitting to the token budgets cuts, measured up front.

Every stage encodes all of its items before it generates or trains on the first one (generation
its prompts, the DataModules their pairs or seed examples) and counts what the budgets cut
(:class:`TruncationStats`). A stage whose share of cut items exceeds
``data.max_truncated_fraction`` is refused by :func:`check_truncation` with the count, the
longest item over each budget and the value to raise that budget to; an allowed cut is logged as
a warning before the stage runs, not only counted in its final summary.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from megatron_scir.data.errors import DataError

logger = logging.getLogger(__name__)

FRACTION_KEY = "data.max_truncated_fraction"
PROMPT_KEY = "data.max_prompt_length"
RESPONSE_KEY = "data.max_response_length"
JUDGE_KEY = "data.judge_max_length"
BUDGET_KEYS = (PROMPT_KEY, RESPONSE_KEY, JUDGE_KEY)
"""The budgets an item can be over, in the order messages name them."""


@dataclass(frozen=True, slots=True)
class Overlong:
    """The longest item over one budget.

    Attributes:
        length: Its tokens before the cut: the budget that would hold it whole.
        item: Where it is, e.g. ``pairs.jsonl:7 (pair 'p3:0:1')``.
    """

    length: int
    item: str


@dataclass
class TruncationStats:
    """What fitting a stage's items to the budgets cut (summed over the data, logged by the
    DataModule; generation counts its prompts the same way)."""

    num_items: int = 0
    """Items encoded: pairs, SFT examples or prompts."""
    num_items_truncated: int = 0
    """Items with a prompt, a response's text or a judge row cut: what
    data.max_truncated_fraction bounds."""
    num_prompts_truncated: int = 0
    """Pairs (SFT: instruction examples; generation: prompts) whose prompt was left-truncated."""
    num_responses_truncated: int = 0
    """Policy responses whose text was right-truncated to data.max_response_length."""
    num_eos_dropped: int = 0
    """Complete responses exactly data.max_response_length long: kept whole, trained without the
    EOS that would follow them (not a cut)."""
    num_judge_truncated: int = 0
    """Judge sequences whose fields were shortened to fit data.judge_max_length."""
    num_boundary_merges: int = 0
    """Responses encoded on their own because their first token merged with the prompt's last."""
    longest: dict[str, Overlong] = field(default_factory=dict)
    """The longest item over each budget (keyed by its config key)."""

    def over_budget(self, key: str, length: int, item: str) -> None:
        """Note an item of ``length`` tokens over the budget ``key`` (the first longest stays)."""
        known = self.longest.get(key)
        if known is None or length > known.length:
            self.longest[key] = Overlong(length, item)

    def add(self, other: TruncationStats) -> None:
        """Add the counts of ``other``, which encoded the items after these."""
        for f in fields(self):
            if f.name == "longest":
                for key, overlong in other.longest.items():
                    self.over_budget(key, overlong.length, overlong.item)
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return ", ".join(
            f"{f.name.removeprefix('num_')}={getattr(self, f.name)}"
            for f in fields(self)
            if f.name.startswith("num_")
        )


def check_truncation(
    stats: TruncationStats,
    *,
    what: str,
    budgets: Mapping[str, int],
    max_fraction: float,
    alternative: str = "",
) -> None:
    """Refuse a stage that would cut more than ``max_fraction`` of its items; warn about a cut
    that is allowed.

    Args:
        stats: The counts of encoding every item of the stage.
        what: The items, plural (``pairs``, ``prompts``, ``seed examples``).
        budgets: The budgets by config key (``data.max_prompt_length``: 32, ...).
        max_fraction: ``data.max_truncated_fraction``.
        alternative: Another remedy, appended to the message (``, or set ...``).

    Raises:
        DataError: naming the count, the longest item over each budget and the keys to raise.
    """
    n, cut = stats.num_items, stats.num_items_truncated
    if cut == 0:
        return
    longest = [(key, stats.longest[key]) for key in BUDGET_KEYS if key in stats.longest]
    counts = f"{cut} of {n} {what} ({cut / n:.1%}) do not fit the token budgets"
    where = "; ".join(
        f"over {key}={budgets[key]}: {o.item}, {o.length} tokens" for key, o in longest
    )
    if cut <= max_fraction * n + 1e-9:
        logger.warning(
            "%s and are cut to fit, as %s=%s allows. Longest %s",
            counts,
            FRACTION_KEY,
            max_fraction,
            where,
        )
        return
    raises = [f"{key} to {o.length}" for key, o in longest]
    raises = ", ".join(raises[:-1]) + " and " + raises[-1] if len(raises) > 1 else raises[0]
    needed = math.ceil(cut / n * 1000) / 1000  # rounded up, so that it admits these cuts
    any_cut = "" if needed == 1 else " (1.0 cuts whatever does not fit)"
    raise DataError(
        f"{counts}, more than {FRACTION_KEY}={max_fraction} allows. Longest {where}. Raise "
        f"{raises} (the budgets stay within model.max_position_embeddings){alternative}, or set "
        f"{FRACTION_KEY}={needed} to cut them to fit{any_cut}"
    )
