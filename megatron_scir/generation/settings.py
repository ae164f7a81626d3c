"""What one generation call samples: temperature, top-p / top-k, length and stop conditions.

:class:`SamplingSettings` is the engine-independent form of the ``generation`` config section;
the inference backend translates it into its own sampling parameters (see
:mod:`megatron_scir.generation.mcore_inference`).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_scir.config import ConfigError, GenerationConfig


@dataclass(frozen=True, kw_only=True)
class SamplingSettings:
    """Sampling parameters shared by every response of a run.

    Attributes:
        temperature: Softmax temperature; 0 means greedy (argmax).
        top_p: Nucleus threshold; 0 or 1 turn it off.
        top_k: Keep the k most likely tokens; 0 turns it off, 1 is greedy.
        max_new_tokens: Tokens sampled per response at most (the stop id included).
        stop_strings: A response ends at the first of these texts (the text is cut before it).
        ignore_eos: Keep sampling after EOS and every other stop id (benchmarks and parity
            tests: fixed-length output).
    """

    temperature: float = 1.0
    top_p: float = 0.0
    top_k: int = 0
    max_new_tokens: int = 64
    stop_strings: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ConfigError(f"generation.temperature: {self.temperature} must be >= 0")
        if not 0 <= self.top_p <= 1:
            raise ConfigError(f"generation.top_p: {self.top_p} must be in [0, 1]")
        if self.top_k < 0:
            raise ConfigError(f"generation.top_k: {self.top_k} must be >= 0")
        if self.max_new_tokens <= 0:
            raise ConfigError(f"generation.max_new_tokens: {self.max_new_tokens} must be > 0")
        if any(not s for s in self.stop_strings):
            raise ConfigError("generation.stop_strings: an empty stop string would stop at once")
        if not self.greedy and self.top_k > 1 and self.nucleus:
            # Megatron-Core's sampler refuses top-k and top-p together.
            raise ConfigError(
                f"generation.top_k={self.top_k} and generation.top_p={self.top_p}: "
                "Megatron-Core samples with top-k or top-p, not both; set generation.top_k=0 "
                "or generation.top_p=1"
            )

    @property
    def greedy(self) -> bool:
        """Whether every token is the argmax (temperature 0 or top-k 1)."""
        return self.temperature == 0 or self.top_k == 1

    @property
    def nucleus(self) -> bool:
        """Whether top-p filtering is on (0 < top_p < 1)."""
        return 0 < self.top_p < 1

    @classmethod
    def from_config(cls, gen: GenerationConfig) -> SamplingSettings:
        """The settings of the ``generation`` config section."""
        return cls(
            temperature=gen.temperature,
            top_p=gen.top_p,
            top_k=gen.top_k,
            max_new_tokens=gen.max_new_tokens,
            stop_strings=tuple(gen.stop_strings),
        )

    @classmethod
    def greedy_decoding(cls, max_new_tokens: int, *, ignore_eos: bool = False) -> SamplingSettings:
        """Argmax decoding of ``max_new_tokens`` tokens."""
        return cls(temperature=0.0, max_new_tokens=max_new_tokens, ignore_eos=ignore_eos)
