"""Counts of a generation run, its one-line summary, and the rank-0 progress bar."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class GenerationStats:
    """What a generation run did (complete on global rank 0).

    Attributes:
        num_prompts: Prompts in the prompt file.
        num_prompts_resumed: Prompts already done by an earlier run (in the output, or skipped).
        num_prompts_generated: Prompts answered by this run.
        num_prompts_skipped: Prompts longer than the budget, skipped (``long_prompts=skip``).
        num_prompts_truncated: Prompts left-truncated to the budget (``long_prompts=truncate``).
        num_responses: Responses written by this run.
        num_responses_truncated: Responses cut by ``max_new_tokens`` (no EOS, no stop string).
        num_new_tokens: Tokens sampled for the written responses.
        seconds: Wall time of the generation loop.
        stopped: Ended early by a stop request (a rerun continues after the last chunk).
    """

    num_prompts: int = 0
    num_prompts_resumed: int = 0
    num_prompts_generated: int = 0
    num_prompts_skipped: int = 0
    num_prompts_truncated: int = 0
    num_responses: int = 0
    num_responses_truncated: int = 0
    num_new_tokens: int = 0
    seconds: float = 0.0
    stopped: bool = False

    @property
    def tokens_per_second(self) -> float:
        """New tokens per second of this run (all data-parallel replicas together)."""
        return self.num_new_tokens / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: prompts, responses, truncation, throughput."""
        return (
            f"generation: {self.num_prompts_generated} prompts answered "
            f"({self.num_prompts} in file, {self.num_prompts_resumed} done before, "
            f"{self.num_prompts_skipped} skipped as too long, {self.num_prompts_truncated} "
            f"left-truncated); {self.num_responses} responses, {self.num_responses_truncated} "
            f"truncated at max_new_tokens; {self.num_new_tokens} new tokens in "
            f"{self.seconds:.1f} s = {self.tokens_per_second:.1f} tokens/s"
        )


class GenerationProgress:
    """A tqdm bar over prompts with a tokens/s postfix; silent when ``enabled`` is False.

    Args:
        total: Prompts in the prompt file.
        initial: Prompts already done (a resumed run starts the bar there).
        enabled: Show the bar (rank 0 with ``logging.progress``).
    """

    def __init__(self, total: int, initial: int, *, enabled: bool) -> None:
        self._bar = None
        self._tokens = 0
        self._start = time.perf_counter()
        if enabled:
            from tqdm import tqdm  # lazy: tqdm costs ~45 ms, only for rank 0's bar

            self._bar = tqdm(
                total=total, initial=initial, desc="generate", unit="prompt", dynamic_ncols=True
            )

    def update(self, num_prompts: int, num_new_tokens: int) -> None:
        """Advance by a committed chunk."""
        self._tokens += num_new_tokens
        if self._bar is not None:
            rate = self._tokens / max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
            self._bar.update(num_prompts)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
