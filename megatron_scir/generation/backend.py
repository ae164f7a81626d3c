"""The interface between the generation loop and an inference engine, and response finishing.

An engine backend turns prompt token ids into sampled token ids; everything else (prompts,
chunks, resumption, data parallelism, output files) is engine-independent. Today's backend is
Megatron-Core's static engine (:mod:`megatron_scir.generation.mcore_inference`); a faster decode
path (CUDA graphs, the dynamic engine where flash-attn exists) is another class with the same two
methods, chosen in :func:`megatron_scir.generation.mcore_inference.select_engine`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from megatron_scir.generation.settings import SamplingSettings


@dataclass(frozen=True, slots=True)
class Completion:
    """The sampled continuation of one prompt.

    Attributes:
        token_ids: New tokens, the stop id excluded (with ``ignore_eos`` every sampled token is
            kept).
        hit_eos: Whether the response ended with a stop id (EOS or another of the tokenizer's
            ``stop_ids``) within ``max_new_tokens``.
    """

    token_ids: tuple[int, ...]
    hit_eos: bool


class GenerationBackend(Protocol):
    """What the generation loop needs from an inference engine.

    Every rank of a model-parallel group calls :meth:`generate` with the same arguments and gets
    the same completions back (TP ranks sample identical tokens from gathered logits; pipeline
    stages receive the last stage's logits).
    """

    name: str

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, *, seed: int
    ) -> list[Completion]:
        """Sample one completion per prompt (at most the backend's max batch size at once).

        Args:
            prompts: Prompt token ids, each within the backend's prompt budget.
            settings: Sampling parameters.
            seed: Seeds the sampler for this call: the same prompts, settings, seed, model and
                layout give the same completions.
        """
        ...

    def close(self) -> None:
        """Release the KV cache and return the model to its state before generation."""
        ...


@dataclass(frozen=True, slots=True)
class Response:
    """A finished response.

    Attributes:
        text: The decoded response, cut before the first stop string.
        truncated: Cut by ``max_new_tokens``: neither a stop id (EOS, end-of-turn) nor a stop
            string ended it.
        num_tokens: Tokens sampled for it (up to and including the stop string).
    """

    text: str
    truncated: bool
    num_tokens: int


def finish_response(
    completion: Completion, *, decode: Callable[[Sequence[int]], str], stop_strings: Sequence[str]
) -> Response:
    """Decode a completion and cut it at the first stop string.

    Stop strings are matched on the decoded text (a stop string may span tokens); the response
    ends right before the earliest match. A response with a stop string or a stop id (EOS or
    another of the tokenizer's ``stop_ids``) is complete; any other response was cut by the token
    budget.
    """
    text = decode(completion.token_ids)
    cut = min((i for i in (text.find(s) for s in stop_strings) if i >= 0), default=-1)
    if cut >= 0:
        return Response(text[:cut], truncated=False, num_tokens=len(completion.token_ids))
    return Response(text, truncated=not completion.hit_eos, num_tokens=len(completion.token_ids))


def check_batch(
    prompts: Sequence[Sequence[int]],
    settings: SamplingSettings,
    *,
    max_batch_size: int,
    max_prompt_length: int,
    max_new_tokens: int,
) -> None:
    """A backend's limits: 1..max_batch_size prompts of 1..max_prompt_length tokens, at most
    ``max_new_tokens`` new tokens.

    Raises:
        ValueError: naming the limit the batch exceeds.
    """
    if not 0 < len(prompts) <= max_batch_size:
        raise ValueError(f"{len(prompts)} prompts for a batch of at most {max_batch_size}")
    longest = max(len(p) for p in prompts)
    if min(len(p) for p in prompts) == 0 or longest > max_prompt_length:
        raise ValueError(
            f"prompt lengths must be in [1, {max_prompt_length}] (longest: {longest})"
        )
    if settings.max_new_tokens > max_new_tokens:
        raise ValueError(
            f"max_new_tokens {settings.max_new_tokens} exceeds the backend's {max_new_tokens}"
        )
