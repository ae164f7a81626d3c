"""The one module that calls ``megatron.core.inference`` (written against megatron-core 0.19).

Megatron-Core's inference API changes between minor releases (0.16: ``InferenceWrapperConfig``;
0.19: ``GPTInferenceWrapper(model, context)``), so every version-specific call lives here:

- :class:`StaticEngineBackend`: ``StaticInferenceContext`` → ``GPTInferenceWrapper`` →
  ``TextGenerationController`` → ``StaticInferenceEngine(legacy=True)``, the engine that runs on
  CPU (gloo, with :mod:`megatron_scir.parallel.cpu_compat`) and on GPU without flash-attn.
- :func:`select_engine`: the ``generation.engine`` decision with a logged reason.

The controller is subclassed in three small ways: logits of the vocabulary padding (rows added
for tensor parallelism, never produced by the tokenizer) are masked before sampling, a response
ends at the first of the tokenizer's stop ids (Megatron's static batch loop ends a row on one id,
the tokenizer's ``eod``; real chat models end a turn with several), and a response whose text
reached a stop string stops early.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import warnings
from collections.abc import Callable, Collection, Sequence

import torch

from megatron_scir.config import ConfigError
from megatron_scir.config.choices import Engine
from megatron_scir.generation.backend import Completion
from megatron_scir.generation.settings import SamplingSettings

logger = logging.getLogger(__name__)

# megatron-core 0.19 DynamicInferenceContext needs flash-attn's varlen/KV-cache kernels
_FLASH_ATTN_MIN = (2, 7, 3)


def dynamic_engine_blockers() -> list[str]:
    """Why Megatron-Core's dynamic engine cannot serve generation here.

    Lists the missing requirements (CUDA, flash-attn), then the one that always holds today:
    megatron-scir wires only the static engine.
    """
    blockers = []
    if not torch.cuda.is_available():
        blockers.append("no CUDA device")
    try:
        version = importlib.metadata.version("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        version = None
    if version is None or _version_tuple(version) < _FLASH_ATTN_MIN:
        found = f"found {version}" if version else "not installed"
        blockers.append(f"flash-attn >= {'.'.join(map(str, _FLASH_ATTN_MIN))} ({found})")
    blockers.append("megatron-scir has no dynamic-engine backend yet")
    return blockers


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def select_engine(requested: str) -> tuple[str, str]:
    """The engine for ``generation.engine`` and the reason (logged by the caller).

    Raises:
        ConfigError: ``dynamic`` was requested but cannot run here.
    """
    if requested == Engine.STATIC:
        return "static", "generation.engine=static"
    blockers = dynamic_engine_blockers()
    if requested == Engine.DYNAMIC:
        raise ConfigError(
            f"generation.engine=dynamic cannot run here: {'; '.join(blockers)}. "
            "Use generation.engine=static (or auto)"
        )
    return "static", f"dynamic engine not used: {'; '.join(blockers)}"


class _TokenizerView:
    """The attributes Megatron's controller reads from a tokenizer, over our ids and decoder."""

    def __init__(self, *, eos_id: int, bos_id: int | None, decode: Callable) -> None:
        self.eod = eos_id
        self.bos = bos_id
        self._decode = decode

    def detokenize(self, ids: Sequence[int], **_: object) -> str:
        return self._decode(ids)

    def tokenize(self, text: str) -> list[int]:
        raise ValueError("megatron-scir passes prompt token ids; text prompts are not tokenized")


class _StopWatch:
    """Marks rows done once their decoded tail contains a stop string (one static batch).

    Only the last ``window`` tokens are decoded per step (a stop string of c characters spans at
    most ~4c tokens, byte-fallback pieces included); the authoritative cut is made on the full
    text afterwards (:func:`megatron_scir.generation.backend.finish_response`), so this only
    saves decode steps.
    """

    def __init__(self, prompt_lengths: list[int], stop_strings: Sequence[str], decode) -> None:
        self.prompt_lengths = prompt_lengths
        self.stop_strings = tuple(stop_strings)
        self.decode = decode
        self.window = 4 * max(len(s) for s in self.stop_strings) + 8
        self.stopped: set[int] = set()

    def update(self, tokens: torch.Tensor, position: int, done: torch.Tensor, started) -> None:
        live = (~done & started).nonzero().flatten().tolist()
        if not live:
            return
        tail = tokens[:, max(position + 1 - self.window, 0) : position + 1].cpu()
        offset = max(position + 1 - self.window, 0)
        for row in live:
            ids = tail[row, max(self.prompt_lengths[row] - offset, 0) :].tolist()
            text = self.decode(ids)
            if any(s in text for s in self.stop_strings):
                done[row] = True
                self.stopped.add(row)


@functools.cache
def _controller_class():
    from megatron.core.inference.text_generation_controllers import (  # lazy: Megatron-Core
        text_generation_controller,
    )

    class ScirTextGenerationController(text_generation_controller.TextGenerationController):
        """Megatron's controller with padded-vocabulary masking, stop ids and stop strings."""

        num_real_tokens: int = 0
        stop_ids: tuple[int, ...] = ()
        stop_watch: _StopWatch | None = None

        def sample_from_logits(self, last_token_logits, sampling_params=None, *args, **kwargs):
            if last_token_logits.size(-1) > self.num_real_tokens:
                last_token_logits = last_token_logits.clone()
                last_token_logits[:, self.num_real_tokens :] = float("-inf")
            return super().sample_from_logits(last_token_logits, sampling_params, *args, **kwargs)

        def update_generation_status(
            self,
            updated_prompts_tokens,
            generation_started,
            current_context_end_position,
            is_generation_done_tensor,
            generated_sequence_lengths,
            termination_id=None,
        ):
            # Megatron compares the latest token with one termination id (-1: no early
            # termination). A row whose latest token is any stop id is marked done *before*
            # Megatron counts it, so like EOS the stop id is not part of the generated tokens.
            if termination_id != -1 and self.stop_ids:
                latest = updated_prompts_tokens[:, current_context_end_position]
                stop_ids = torch.tensor(self.stop_ids, device=latest.device, dtype=latest.dtype)
                hit = torch.isin(latest, stop_ids) & generation_started
                is_generation_done_tensor = is_generation_done_tensor | hit
            done, lengths = super().update_generation_status(
                updated_prompts_tokens,
                generation_started,
                current_context_end_position,
                is_generation_done_tensor,
                generated_sequence_lengths,
                termination_id,
            )
            if self.stop_watch is not None:
                self.stop_watch.update(
                    updated_prompts_tokens, current_context_end_position, done, generation_started
                )
            return done, lengths

    return ScirTextGenerationController


def _sampling_params(settings: SamplingSettings, eos_id: int):
    from megatron.core.inference.sampling_params import SamplingParams  # lazy: Megatron-Core

    if settings.greedy:
        temperature, top_k, top_p = 1.0, 1, 0.0
    else:
        temperature, top_k = settings.temperature, settings.top_k
        top_p = float(settings.top_p) if settings.nucleus else 0.0
    params = SamplingParams(
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        num_tokens_to_generate=settings.max_new_tokens,
        termination_id=eos_id,
    )
    if settings.ignore_eos:
        # read by the static batch loop: termination id -1, every row runs to the budget
        params.add_attributes({"no_early_termination": True})
    return params


class StaticEngineBackend:
    """Megatron-Core's ``StaticInferenceEngine`` (legacy static batching) over one model stage.

    Collective: every rank of the model-parallel group builds it and calls :meth:`generate`
    with the same arguments. The KV cache holds ``max_batch_size × max_sequence_length``.

    Args:
        model: This rank's stage (a single chunk: Megatron inference has no interleaved PP).
        eos_id: End-of-sequence id (ends a response; Megatron's ``eod``, also its prompt pad).
        bos_id: Beginning-of-sequence id, or None.
        stop_ids: Further ids that end a response like EOS (a tokenizer's ``stop_ids``:
            end-of-turn tokens); the first of them or EOS ends it and is not part of it.
        num_real_tokens: Logit columns that may be sampled (the tokenizer's vocabulary); the
            padding up to Megatron's padded vocabulary is masked.
        max_batch_size: Prompts decoded together at most.
        max_prompt_length: Longest prompt accepted, in tokens.
        max_new_tokens: Longest response the KV cache is sized for.
        decode: Token ids → text (for stop strings).
    """

    name = "static"

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        eos_id: int,
        bos_id: int | None,
        stop_ids: Collection[int] = (),
        num_real_tokens: int,
        max_batch_size: int,
        max_prompt_length: int,
        max_new_tokens: int,
        decode: Callable[[Sequence[int]], str],
    ) -> None:
        from megatron.core.inference.contexts import StaticInferenceContext  # lazy: Megatron-Core
        from megatron.core.inference.engines import (  # lazy: Megatron-Core
            StaticInferenceEngine,
            static_engine,
        )
        from megatron.core.inference.model_inference_wrappers.gpt import (  # lazy: Megatron-Core
            gpt_inference_wrapper,
        )
        from tqdm import tqdm  # lazy: tqdm costs ~45 ms, only needed once a backend is built

        if isinstance(model, (list, tuple)):
            raise ValueError("Megatron-Core inference takes one model chunk (no interleaved PP)")
        self.model, self.eos_id, self.decode = model, eos_id, decode
        self.max_batch_size, self.max_prompt_length = max_batch_size, max_prompt_length
        self.max_new_tokens = max_new_tokens
        self._was_training = model.training
        self._context = StaticInferenceContext(max_batch_size, max_prompt_length + max_new_tokens)
        wrapper = gpt_inference_wrapper.GPTInferenceWrapper(model, self._context)
        tokenizer = _TokenizerView(eos_id=eos_id, bos_id=bos_id, decode=decode)
        self._controller = _controller_class()(wrapper, tokenizer)
        self._controller.num_real_tokens = num_real_tokens
        self._controller.stop_ids = tuple(sorted({eos_id, *map(int, stop_ids)}))
        # run_engine draws a tqdm bar per static batch on every rank; the generation loop has
        # its own rank-0 bar
        static_engine.tqdm = functools.partial(tqdm, disable=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*static engine will be deprecated.*")
            self._engine = StaticInferenceEngine(
                self._controller, max_batch_size=max_batch_size, legacy=True
            )

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, *, seed: int
    ) -> list[Completion]:
        """Sample one completion per prompt in one static batch (see ``GenerationBackend``)."""
        from megatron.core.inference.inference_request import (  # lazy: Megatron-Core
            InferenceRequest,
        )

        self._check(prompts, settings)
        params = _sampling_params(settings, self.eos_id)
        watch = None
        if settings.stop_strings:
            watch = _StopWatch([len(p) for p in prompts], settings.stop_strings, self.decode)
        self._controller.stop_watch = watch
        self._engine.random_seed = seed
        self._controller.sampling_rng.manual_seed(seed)
        requests = [
            InferenceRequest(
                request_id=self._engine.get_new_request_id(),
                prompt="",
                sampling_params=params,
                prompt_tokens=[int(t) for t in p],
            )
            for p in prompts
        ]
        finished = self._engine.generate(inference_requests=requests)
        scheduler = self._engine.scheduler
        for request in requests:  # the scheduler keeps every finished request otherwise
            scheduler.completed_request_pool.pop(request.request_id, None)
            scheduler.requests.pop(request.request_id, None)
        stopped = watch.stopped if watch else set()
        return [
            Completion(
                token_ids=tuple(r.generated_tokens.tolist()),
                # generated_length excludes the stop id, so a stop at the last step counts
                hit_eos=not settings.ignore_eos
                and r.generated_length < settings.max_new_tokens
                and row not in stopped,
            )
            for row, r in enumerate(finished)
        ]

    def _check(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> None:
        if not 0 < len(prompts) <= self.max_batch_size:
            raise ValueError(f"{len(prompts)} prompts for a batch of at most {self.max_batch_size}")
        longest = max(len(p) for p in prompts)
        if min(len(p) for p in prompts) == 0 or longest > self.max_prompt_length:
            raise ValueError(
                f"prompt lengths must be in [1, {self.max_prompt_length}] (longest: {longest})"
            )
        if settings.max_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"max_new_tokens {settings.max_new_tokens} exceeds the KV cache's "
                f"{self.max_new_tokens}"
            )

    def close(self) -> None:
        """Free the KV cache, end Megatron's process-wide inference mode, restore train mode."""
        from megatron.core.inference.utils import InferenceMode  # lazy: Megatron-Core

        self._context.key_value_memory_dict.clear()
        InferenceMode.unset_active()
        self.model.train(self._was_training)

    def __enter__(self) -> StaticEngineBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def build_backend(model: torch.nn.Module, cfg, tokenizer) -> StaticEngineBackend:
    """The backend ``generation.engine`` selects, over this rank's model stage.

    Args:
        model: This rank's stage (one chunk).
        cfg: The run config (``generation`` section; ``model.vocab_size``).
        tokenizer: The model's tokenizer (EOS/BOS and stop ids, vocabulary size, decoding).
    """
    name, reason = select_engine(cfg.generation.engine)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        logger.info("generation engine: %s (%s)", name, reason)
    gen = cfg.generation
    return StaticEngineBackend(
        model,
        eos_id=tokenizer.eos_id,
        bos_id=tokenizer.bos_id,
        stop_ids=tokenizer.stop_ids,
        num_real_tokens=min(tokenizer.vocab_size, cfg.model.vocab_size),
        max_batch_size=gen.max_batch_size,
        max_prompt_length=cfg.data.max_prompt_length,
        max_new_tokens=gen.max_new_tokens,
        decode=tokenizer.decode,
    )
