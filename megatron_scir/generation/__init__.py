"""Generation: N sampled responses per prompt from the Megatron model (SCIR_SPEC §7.1).

:func:`generate` is the in-process API: it takes a parallel runtime, the model chunks, a
tokenizer, prompts and an output path, and neither creates nor destroys parallel state (the
``scir generate`` command in :mod:`megatron_scir.cli.generate` owns the world). Megatron-Core is
imported only when a backend is built (:mod:`.mcore_inference`), so importing this package is
cheap. Files and options: docs/generation.md.
"""

from megatron_scir.generation.backend import (
    Completion,
    GenerationBackend,
    Response,
    finish_response,
)
from megatron_scir.generation.prompts import EncodedPrompt, PromptEncoder
from megatron_scir.generation.runner import generate, generate_responses, generation_layout
from megatron_scir.generation.settings import SamplingSettings
from megatron_scir.generation.stats import GenerationProgress, GenerationStats

__all__ = [
    "Completion",
    "EncodedPrompt",
    "GenerationBackend",
    "GenerationProgress",
    "GenerationStats",
    "PromptEncoder",
    "Response",
    "SamplingSettings",
    "finish_response",
    "generate",
    "generate_responses",
    "generation_layout",
]
