"""The one module that calls ``megatron.core.inference`` (written against megatron-core 0.19).

Megatron-Core's inference API changes between minor releases (0.16: ``InferenceWrapperConfig``;
0.19: ``GPTInferenceWrapper(model, context)``), so every version-specific call lives here:

- :class:`StaticEngineBackend`: Megatron-Core's static inference stack (``StaticInferenceContext``
  and its KV cache, ``GPTInferenceWrapper`` for the forward pass under TP/PP, the
  ``TextGenerationController``'s sampler) driven by :func:`_decode_static_batch`, megatron-scir's
  static batch loop. It runs on CPU (gloo, with :mod:`megatron_scir.parallel.cpu_compat`) and on
  GPU without flash-attn.
- :func:`select_engine`: the ``generation.engine`` decision with a logged reason.

The loop is Megatron's legacy static loop (``generate_all_output_tokens_static_batch``: prefill
up to the batch's shortest prompt, then one position per step for every row, longer prompts fed
their own tokens) with changes that matter for self-rewarding, where a batch holds N samples of
each prompt under one chat template:

- **prompts end together**: with the ``local`` and ``sdpa`` specs the prompts are left-padded
  to end on the same position, the padding hidden by a per-row attention mask, so every row
  samples from the first step (Megatron feeds the longer prompts' tokens one step at a time);
- **one prefill per prompt**: the batch's common prefix (the system prompt) is prefilled once
  and moved into each row, and the N samples of a prompt share its prefill (a row gather of the
  context's ``key_value_memory_dict``);
- **finished rows leave the batch**: once at most half of the rows in the KV cache are still
  running, the cache is compacted to those rows;
- **no step past a row's budget**: a row is done at ``max_new_tokens`` sampled tokens (Megatron's
  loop runs every row to the longest prompt plus the budget and trims afterwards).

With those specs the attention caches keys after RoPE
(:class:`megatron_scir.models.attention.KeysAfterRopeSelfAttention`), so a decode step does not
rotate every cached key again.

The controller is subclassed in three small ways: logits of the vocabulary padding (rows added
for tensor parallelism, never produced by the tokenizer) are masked and the token is drawn by
:func:`megatron_scir.generation.sampling.sample_tokens` (Megatron's distribution, without a
full-vocabulary sort and ``multinomial`` per step), a response
ends at the first of the tokenizer's stop ids (Megatron's static batch loop ends a row on one id,
the tokenizer's ``eod``; real chat models end a turn with several), and a response whose text
reached a stop string stops early.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
from collections.abc import Callable, Collection, Sequence

import torch

from megatron_scir.config import ConfigError
from megatron_scir.config.choices import Engine, TransformerImpl
from megatron_scir.generation.backend import Completion, GenerationBackend, check_batch
from megatron_scir.generation.cuda_graphs import check_cuda_graphs, decode_cuda_graphs
from megatron_scir.generation.sampling import sample_tokens
from megatron_scir.generation.settings import SamplingSettings
from megatron_scir.generation.vllm_backend import build_vllm_backend, vllm_blockers, vllm_refusal

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
        ConfigError: ``dynamic`` or ``vllm`` was requested but cannot run here (what is
            missing, in one line).
    """
    if requested == Engine.STATIC:
        return "static", "generation.engine=static"
    if requested == Engine.VLLM:
        blockers = vllm_blockers()
        if blockers:
            raise ConfigError(vllm_refusal(blockers))
        return "vllm", "generation.engine=vllm"
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

    def __init__(self, stop_strings: Sequence[str], decode) -> None:
        self.stop_strings = tuple(stop_strings)
        self.decode = decode
        self.window = 4 * max(len(s) for s in self.stop_strings) + 8
        self.stopped: set[int] = set()

    def update(
        self, tokens: torch.Tensor, position: int, rows: Sequence[int], begins: torch.Tensor
    ) -> list[int]:
        """The ``rows`` (still running, started at ``begins``) whose text up to ``position``
        holds a stop string; they are remembered in :attr:`stopped`."""
        if not rows:
            return []
        offset = max(position + 1 - self.window, 0)
        tail = tokens[:, offset : position + 1].cpu()
        hits = []
        for row in rows:
            ids = tail[row, max(int(begins[row]) - offset, 0) :].tolist()
            if any(s in self.decode(ids) for s in self.stop_strings):
                hits.append(row)
        self.stopped.update(hits)
        return hits


@functools.cache
def _controller_class():
    from megatron.core.inference.text_generation_controllers import (  # lazy: Megatron-Core
        text_generation_controller,
    )

    class ScirTextGenerationController(text_generation_controller.TextGenerationController):
        """Megatron's controller with padded-vocabulary masking, stop ids and stop strings."""

        num_real_tokens: int = 0
        stop_ids: tuple[int, ...] = ()

        def sample_from_logits(self, last_token_logits, sampling_params=None, *args, **kwargs):
            """Megatron's distribution, drawn by :func:`sample_tokens` (top-k before a full
            sort, an exponential race instead of ``multinomial``)."""
            if last_token_logits.size(-1) > self.num_real_tokens:
                last_token_logits = last_token_logits.clone()
                last_token_logits[:, self.num_real_tokens :] = float("-inf")
            p = sampling_params
            return sample_tokens(
                last_token_logits,
                temperature=p.temperature,
                top_k=p.top_k,
                top_p=p.top_p,
                generator=self.sampling_rng,
            )

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
            return super().update_generation_status(
                updated_prompts_tokens,
                generation_started,
                current_context_end_position,
                is_generation_done_tensor,
                generated_sequence_lengths,
                termination_id,
            )

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
    """Megatron-Core's static inference stack over one model stage, decoded by
    :func:`_decode_static_batch` (one prefill per prompt, finished rows leave the batch).

    Collective: every rank of the model-parallel group builds it and calls :meth:`generate`
    with the same arguments. The KV cache holds ``max_batch_size × max_sequence_length``.

    Args:
        model: This rank's stage (a single chunk: Megatron inference has no interleaved PP).
        eos_id: End-of-sequence id (ends a response; also the pad of the token buffer).
        bos_id: Beginning-of-sequence id, or None.
        stop_ids: Further ids that end a response like EOS (a tokenizer's ``stop_ids``:
            end-of-turn tokens); the first of them or EOS ends it and is not part of it.
        num_real_tokens: Logit columns that may be sampled (the tokenizer's vocabulary); the
            padding up to Megatron's padded vocabulary is masked.
        max_batch_size: Prompts decoded together at most.
        max_prompt_length: Longest prompt accepted, in tokens.
        max_new_tokens: Longest response the KV cache is sized for.
        decode: Token ids → text (for stop strings).
        align_prompts: Left-pad the prompts to end together, with per-row attention masks,
            and prefill the batch's common prefix once (the ``local`` and ``sdpa`` specs;
            Transformer Engine's causal attention takes no explicit mask).
        cuda_graphs: Decode with Megatron's flash decode and per-layer CUDA graphs
            (:mod:`~megatron_scir.generation.cuda_graphs`; needs CUDA and flash-attn). Flash
            decode takes no mask: prompts start at position 0 (``align_prompts`` off).
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
        align_prompts: bool = True,
        cuda_graphs: bool = False,
    ) -> None:
        from megatron.core.inference.contexts import StaticInferenceContext  # lazy: Megatron-Core
        from megatron.core.inference.model_inference_wrappers.gpt import (  # lazy: Megatron-Core
            gpt_inference_wrapper,
        )
        from megatron.core.inference.utils import InferenceMode  # lazy: Megatron-Core

        if isinstance(model, (list, tuple)):
            raise ValueError("Megatron-Core inference takes one model chunk (no interleaved PP)")
        self.model, self.eos_id, self.decode = model, eos_id, decode
        self.max_batch_size, self.max_prompt_length = max_batch_size, max_prompt_length
        check_cuda_graphs(cuda_graphs)
        self.max_new_tokens, self.align_prompts = max_new_tokens, align_prompts and not cuda_graphs
        self._was_training = model.training
        self._context = StaticInferenceContext(max_batch_size, max_prompt_length + max_new_tokens)
        self._wrapper = gpt_inference_wrapper.GPTInferenceWrapper(model, self._context)
        tokenizer = _TokenizerView(eos_id=eos_id, bos_id=bos_id, decode=decode)
        self._controller = _controller_class()(self._wrapper, tokenizer)
        self._controller.num_real_tokens = num_real_tokens
        self._controller.stop_ids = tuple(sorted({eos_id, *map(int, stop_ids)}))
        self._device = next(model.parameters()).device
        self._shift_keys = _key_shifter(model, max_prompt_length + max_new_tokens)
        self._graphs = contextlib.ExitStack()  # the model's config back on close
        self._graphs.enter_context(decode_cuda_graphs(model, cuda_graphs))
        InferenceMode.set_active()  # read by modules that take an inference-only path

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, *, seed: int
    ) -> list[Completion]:
        """Sample one completion per prompt in one static batch (see ``GenerationBackend``)."""
        self._check(prompts, settings)
        params = _sampling_params(settings, self.eos_id)
        self._controller.sampling_rng.manual_seed(seed)
        watch = None
        if settings.stop_strings:
            watch = _StopWatch(settings.stop_strings, self.decode)
        with torch.inference_mode():
            tokens, begins, generated = _decode_static_batch(
                self._wrapper, self._controller, prompts, params, self._device, watch,
                align_prompts=self.align_prompts, shift_keys=self._shift_keys,
            )
        stopped = watch.stopped if watch else set()
        completions = []
        for row in range(len(prompts)):
            begin, length = int(begins[row]), int(generated[row])
            completions.append(
                Completion(
                    token_ids=tuple(tokens[row, begin : begin + length].tolist()),
                    # the generated length excludes the stop id, so a stop at the last step
                    # counts
                    hit_eos=not settings.ignore_eos
                    and length < settings.max_new_tokens
                    and row not in stopped,
                )
            )
        return completions

    def _check(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> None:
        check_batch(
            prompts, settings, max_batch_size=self.max_batch_size,
            max_prompt_length=self.max_prompt_length, max_new_tokens=self.max_new_tokens,
        )

    def close(self) -> None:
        """Free the KV cache, end Megatron's process-wide inference mode, restore train mode."""
        from megatron.core.inference.utils import InferenceMode  # lazy: Megatron-Core

        self._context.key_value_memory_dict.clear()
        self._graphs.close()
        InferenceMode.unset_active()
        self.model.train(self._was_training)

    def __enter__(self) -> StaticEngineBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _key_shifter(model: torch.nn.Module, length: int):
    """``shift_keys(keys, shifts)`` for a model whose attention caches keys after RoPE
    (:class:`~megatron_scir.models.attention.KeysAfterRopeSelfAttention`), else None."""
    from megatron.core.utils import get_attr_wrapped_model  # lazy: Megatron-Core

    from megatron_scir.models.attention import (  # lazy: imports Megatron-Core
        KeysAfterRopeSelfAttention,
        shift_cached_keys,
    )

    if not any(isinstance(m, KeysAfterRopeSelfAttention) for m in model.modules()):
        return None
    rotary = get_attr_wrapped_model(model, "rotary_pos_emb")
    config = get_attr_wrapped_model(model, "config")
    return functools.partial(shift_cached_keys, freqs=rotary(length), config=config)


COMPACT_WHEN = 0.5
"""Compact the KV cache once at most this share of its rows is still running (a compaction
copies the filled part of the cache once; a step over a row that is done costs a row of every
matmul)."""


def _cpu_fast_path():
    """On CPU, decode outside the compatibility layer's device mode (a Python call per torch
    op; see :func:`megatron_scir.parallel.cpu_compat.device_mode_paused`)."""
    if torch.cuda.is_available():
        return contextlib.nullcontext()
    from megatron_scir.parallel import cpu_compat  # lazy: CPU runs only

    return cpu_compat.device_mode_paused()


def _decode_static_batch(
    wrapper, controller, prompts, params, device, watch=None, *, align_prompts=True,
    shift_keys=None,
):
    """The static batch loop: one prefill per prompt, finished rows leaving the batch.

    ``align_prompts`` (the ``local`` and ``sdpa`` specs, whose attention takes a per-row mask):
    prompts are left-padded to end on the same position (:func:`_prefill_aligned`), so every
    row samples from the first step. Without it (Transformer Engine's causal attention takes
    no mask) prompts start at position 0 as in Megatron's loop and longer prompts are fed their
    own tokens one step at a time (:func:`_prefill_ragged`; the runner groups prompts of
    similar length).

    Returns ``(tokens [B, longest prompt + max new], begins [B], generated lengths [B])``: row
    ``r``'s response is ``tokens[r, begins[r] : begins[r] + generated[r]]`` (the stop id that
    ended it is not counted, as in Megatron's loop). Every rank of the model-parallel group runs
    it with the same arguments and samples the same tokens (the last pipeline stage's logits are
    broadcast; tensor-parallel ranks hold the same gathered logits and the same seeded RNG).
    """
    context = wrapper.inference_context
    max_new = params.num_tokens_to_generate
    no_stop = getattr(params, "no_early_termination", False)
    termination_id = -1 if no_stop else controller.tokenizer.eod
    wrapper.prep_model_for_inference()  # eval mode, an empty context in prefill mode
    if align_prompts:
        tokens, begins, pads, logits = _prefill_aligned(
            wrapper, controller, prompts, max_new, device, shift_keys
        )
    else:
        tokens, begins, pads, logits = _prefill_ragged(
            wrapper, controller, prompts, max_new, device
        )

    b = len(prompts)
    rows = torch.arange(b, device=device)  # the batch row held by each KV cache row
    done = torch.zeros(b, dtype=torch.bool, device=device)
    generated = torch.zeros(b, dtype=torch.long, device=device)
    position = int(begins.min())
    with _cpu_fast_path():  # one-token steps only: Megatron's prefill may build CUDA masks
        while True:
            started = begins[rows] <= position
            sampled = controller.sample_from_logits(logits, params, controller.vocab_size)
            tokens[rows[started], position] = sampled[started]
            status, counts = controller.update_generation_status(
                updated_prompts_tokens=tokens[rows],
                generation_started=started,
                current_context_end_position=position,
                is_generation_done_tensor=done[rows],
                generated_sequence_lengths=generated[rows].clone(),
                termination_id=termination_id,
            )
            done[rows], generated[rows] = status, counts.to(generated.dtype)
            if watch is not None:
                live = rows[started & ~status].tolist()
                done[watch.update(tokens, position, live, begins)] = True
            running = ~(done[rows] | (generated[rows] >= max_new))
            if not bool(running.any()) or position + 1 >= tokens.size(1):
                break
            if bool(started.all()):
                context.enable_decode_mode()
            if int(running.sum()) <= COMPACT_WHEN * len(rows):
                keep = running.nonzero().flatten()
                _gather_cache(context, keep.tolist(), position)
                rows = rows[keep]
            position += 1
            step = _window(tokens[rows], position - 1, position, pads[rows])
            logits = _last_token_logits(wrapper, controller, step)
    return tokens.cpu(), begins.cpu(), generated.clamp(max=max_new).cpu()


def _prefill_aligned(wrapper, controller, prompts, max_new, device, shift_keys=None):
    """Prefill left-padded prompts: the batch's common prefix once, then each distinct prompt
    once, and copy the KV cache rows to the rows that share them.

    Row ``r`` holds ``pads[r]`` padding slots, then its prompt, ending at slot ``longest - 1``.
    The common prefix (a chat template's system prompt) is prefilled on one row at slots
    ``[0, c)`` and moved to slots ``[pads[r], pads[r] + c)`` of each distinct prompt's row:
    Megatron's static cache holds keys before RoPE, and RoPE scores depend on the distance
    between positions only, so a prefix's cache does not depend on where it sits. Then the
    distinct prompts' slots ``[c, longest)`` are prefilled in one window (a prompt with more
    padding recomputes some of its prefix there, with the same values), and the N samples of
    a prompt get its cache rows. Padding slots are hidden from every real query by the mask
    (:func:`_attention_mask`) and the ones no window writes are zeroed, so no query reads
    uninitialised memory.

    Returns ``(tokens, begins, pads, logits)``: the token buffer, each row's first response
    slot, its padding, and the logits of its last prompt token.
    """
    context, eod = wrapper.inference_context, controller.tokenizer.eod
    b, longest = len(prompts), max(map(len, prompts))
    pads = torch.tensor([longest - len(p) for p in prompts], device=device)
    tokens = torch.full((b, longest + max_new), eod, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, longest - len(prompt) : longest] = torch.tensor(prompt, dtype=torch.long)
    tokens = tokens.to(device)

    first_row: dict[tuple[int, ...], int] = {}
    slot = [first_row.setdefault(tuple(p), len(first_row)) for p in prompts]
    heads = [slot.index(u) for u in range(len(first_row))]  # one row per distinct prompt
    common = _common_prefix([prompts[h] for h in heads])  # all of it for one distinct prompt
    if common:  # the common prefix, once, at slots [0, common) of KV cache row 0
        prefix = torch.tensor([prompts[heads[0]][:common]], dtype=torch.long, device=device)
        logits = _last_token_logits(wrapper, controller, _window(prefix, 0, common))
        if len(heads) > 1:
            _place_prefix(context, pads[heads], common, shift_keys)
    if common < longest:  # the rest of each distinct prompt
        window = _window(tokens[heads], common, longest, pads[heads])
        logits = _last_token_logits(wrapper, controller, window)
    if len(heads) < b:
        _gather_cache(context, slot, longest)  # KV cache row r ← its prompt's row
        logits = logits[torch.tensor(slot, device=device)]
    return tokens, torch.full((b,), longest, device=device), pads, logits


def _prefill_ragged(wrapper, controller, prompts, max_new, device):
    """Prefill prompts that start at position 0 (Megatron's layout; Transformer Engine's path)
    up to the batch's shortest prompt: each distinct window ``[0, shortest)`` once (the N
    samples of a prompt share theirs), the KV cache rows copied to the rows that share them.
    Returns what :func:`_prefill_aligned` returns (no padding)."""
    context, eod = wrapper.inference_context, controller.tokenizer.eod
    b, shortest = len(prompts), min(map(len, prompts))
    longest = max(map(len, prompts))
    tokens = torch.full((b, longest + max_new), eod, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
    tokens = tokens.to(device)

    first_row: dict[tuple[int, ...], int] = {}
    slot = [first_row.setdefault(tuple(p[:shortest]), len(first_row)) for p in prompts]
    heads = [slot.index(u) for u in range(len(first_row))]
    logits = _last_token_logits(wrapper, controller, _window(tokens[heads], 0, shortest))
    if len(heads) < b:
        _gather_cache(context, slot, shortest)
        logits = logits[torch.tensor(slot, device=device)]
    begins = torch.tensor([len(p) for p in prompts], device=device)
    return tokens, begins, torch.zeros(b, dtype=torch.long, device=device), logits


def _common_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """The length of the longest prefix every prompt shares."""
    n = 0
    for column in zip(*prompts, strict=False):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def _window(tokens: torch.Tensor, start: int, end: int, pads: torch.Tensor | None = None):
    """The forward inputs of slots ``[start, end)`` of ``tokens`` (Megatron's context window;
    its KV cache must hold slots ``[0, start)`` of the same rows)."""
    rows = tokens.size(0)
    positions = torch.arange(start, end, device=tokens.device).expand(rows, -1)
    return {
        "tokens": tokens[:, start:end],
        "position_ids": positions,  # unused by RoPE (Megatron rotates by cache slot)
        "attention_mask": _attention_mask(start, end, pads),
    }


def _attention_mask(start: int, end: int, pads: torch.Tensor | None) -> torch.Tensor | None:
    """Megatron's mask (True = hidden) of queries ``[start, end)`` over keys ``[0, end)``, for
    rows whose first ``pads[r]`` slots are padding; None where the attention's own mask type
    says it all (no padding, and the first window or a single new token).

    A multi-token window after the first carries its causal mask (Megatron's attention drops
    it once the cache holds tokens). A padding query sees itself only: its output is never
    read, and a row with every key hidden would be NaN, which its cache entry would spread.
    """
    padded = pads is not None and bool(pads.any())
    if not padded and (start == 0 or end - start == 1):
        return None
    device = pads.device if pads is not None else None
    keys = torch.arange(end, device=device)[None, :]
    queries = torch.arange(start, end, device=device)[:, None]
    hidden = keys > queries  # [queries, keys]
    if not padded:
        return hidden[None, None]
    padding = (keys < pads[:, None, None]) & (keys != queries)  # [rows, queries, keys]
    return (hidden | padding)[:, None]


def _last_token_logits(wrapper, controller, window: dict) -> torch.Tensor:
    """``[rows, padded vocab]`` logits of the window's last position, on every rank
    (broadcast from the last pipeline stage)."""
    from megatron.core.inference.communication_utils import (  # lazy: Megatron-Core
        broadcast_from_last_pipeline_stage,
    )

    logits = wrapper.run_one_forward_step(window)
    batch = window["tokens"].size(0)
    if controller.model_is_pipeline_parallel:
        logits = broadcast_from_last_pipeline_stage(
            [batch, 1, controller.vocab_size],
            dtype=controller.model_config.params_dtype,
            tensor=logits,
            pp_group=controller.pp_group,
        )
    return logits[:batch, -1, :]


def _place_prefix(context, pads: torch.Tensor, length: int, shift_keys=None) -> None:
    """KV cache row ``i`` ← the prefix prefilled on row 0 (slots ``[0, length)``), at slots
    ``[pads[i], pads[i] + length)``; slots ``[0, length)`` are zeroed first (padding that no
    window writes: hidden, but never uninitialised memory). ``shift_keys(keys, shifts)``
    moves cached keys later (keys cached after RoPE); None: keys do not depend on their slot
    (Megatron's cache, before RoPE)."""
    rows = len(pads)
    slots = pads[:, None] + torch.arange(length, device=pads.device)[None, :]  # [rows, length]
    row_index = torch.arange(rows, device=pads.device)[:, None].expand_as(slots)
    for key, value in context.key_value_memory_dict.values():
        for memory, shift in ((key, shift_keys), (value, None)):
            # [max sequence, max batch, groups, head dim]
            prefix = memory[:length, :1].expand(-1, rows, -1, -1).clone()
            if shift is not None:
                prefix = shift(prefix, pads.to(memory.device))
            memory[:length, :rows] = 0
            index = (slots.to(memory.device), row_index.to(memory.device))
            memory[index] = prefix.transpose(0, 1)


def _gather_cache(context, rows: Sequence[int], length: int) -> None:
    """KV cache row ``i`` ← row ``rows[i]``, positions ``[0, length)``, for every layer (in
    place; the rows after ``len(rows)`` are left as they are and never read again)."""
    index = torch.tensor(rows, dtype=torch.long)
    for key, value in context.key_value_memory_dict.values():
        for memory in (key, value):  # [max sequence, max batch, groups, head dim]
            picked = index.to(memory.device)
            memory[:length, : len(rows)] = memory[:length, picked]


def build_backend(
    model: torch.nn.Module, cfg, tokenizer, *, hf_dir=None, runtime=None
) -> GenerationBackend:
    """The backend ``generation.engine`` selects, over this rank's model stage.

    Args:
        model: This rank's stage (one chunk); unused by vLLM, which loads ``hf_dir``.
        cfg: The run config (``generation`` section; ``model.vocab_size``).
        tokenizer: The model's tokenizer (EOS/BOS and stop ids, vocabulary size, decoding).
        hf_dir: The same weights as a Hugging Face folder (``generation.engine=vllm`` only).
        runtime: The parallel runtime (vLLM's data-parallel size and rank).

    Raises:
        ConfigError: the engine or ``generation.cuda_graphs`` cannot run here.
    """
    name, reason = select_engine(cfg.generation.engine)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        logger.info("generation engine: %s (%s)", name, reason)
    gen = cfg.generation
    if name == Engine.VLLM:
        return build_vllm_backend(hf_dir, cfg, tokenizer, runtime=runtime)
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
        align_prompts=cfg.model.transformer_impl != TransformerImpl.TE,
        cuda_graphs=gen.cuda_graphs,
    )
