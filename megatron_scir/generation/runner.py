"""Sample N responses per prompt into a resumable JSONL stream (SCIR_SPEC §7.1).

The loop, on every rank of the world:

1. Every prompt is encoded (chat format, long-prompt policy) and measured: a run that would cut
   more prompts than ``data.max_truncated_fraction`` allows is refused before the output is
   opened or a token sampled (``PromptEncoder.encode_all``).
2. Global rank 0 opens the output as an append-with-commit stream (cutting an interrupted
   writer's uncommitted tail) and broadcasts the prompt ids already done: those with a record
   plus those a committed chunk skipped as too long.
3. The pending prompts, in file order, are cut into chunks of ``generation.chunk_size``. Each
   chunk's ``prompts × N`` requests are sorted by prompt length (batches of similar lengths
   waste fewer decode steps), dealt round-robin to the data-parallel replicas and decoded in
   batches of ``generation.max_batch_size``, each batch seeded from the seed and the batch's
   (prompt id, sample index) keys.
4. Rank 0 gathers the replicas' completions, finishes the responses (stop strings, truncation
   flags) and commits the chunk; a chunk is visible only once complete.

A killed run restarted with the same arguments therefore skips exactly the committed chunks and
cuts the rest into the same chunks and batches with the same seeds: the final file equals that
of an uninterrupted run. The same seed, model, prompts and layout give the same responses.

Beside the stream, ``<out>.inputs.json`` records what made it (:func:`generation_inputs`): the
model's identity (its content digest, when the caller names it), the tokenizer's content
fingerprint and the config keys that change a response (``generation.*`` but batch size, chunk
size and engine; the chat template and prompt budget). It is written (atomically) while the
stream has no chunk; a rerun with other inputs, or a stream with chunks and no record, is
refused before a token is sampled, naming what changed, so a file never holds two models' or
two temperatures' samples. (A record beside the stream, not in it, keeps the stream itself the
same bytes for the same responses, whatever path the model was loaded from.) A full disk or an
unwritable output is a :class:`DataError` naming the file; the chunk being written stays
uncommitted (readers skip it, the next writer cuts it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_scir.checkpoint import tokenizer_fingerprint
from megatron_scir.config import Config, ParallelConfig
from megatron_scir.config.outputs import flat_config, select
from megatron_scir.data import (
    ChunkedJsonlWriter,
    DataError,
    GenerationRecord,
    PromptRecord,
    Tokenizer,
    atomic_open,
    read_records,
    record_to_json,
)
from megatron_scir.generation.backend import Completion, GenerationBackend, finish_response
from megatron_scir.generation.mcore_inference import build_backend
from megatron_scir.generation.prompts import EncodedPrompt, PromptEncoder
from megatron_scir.generation.settings import SamplingSettings
from megatron_scir.generation.stats import GenerationProgress, GenerationStats
from megatron_scir.parallel.runtime import Runtime

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Sample:
    """One request of a chunk: response ``sample`` of the chunk's ``prompt``-th kept prompt."""

    prompt: int
    sample: int


def generate(
    runtime: Runtime,
    chunks: Sequence[torch.nn.Module],
    tokenizer: Tokenizer,
    prompts: Sequence[PromptRecord],
    out_path: str | os.PathLike,
    cfg: Config,
    *,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    inputs_id: str | None = None,
    hf_dir: str | os.PathLike | None = None,
) -> GenerationStats:
    """Sample ``generation.num_responses`` responses per prompt with this rank's model stage.

    The in-process API: the caller owns the parallel world (``runtime``) and the model, which
    may be the chunks a trainer is training (bare or DDP-wrapped): they are run in eval mode
    under ``no_grad`` and given back in the mode they came in. Nothing is initialised or
    destroyed here, so a driver can call this between two training phases.

    Args:
        runtime: The parallel runtime the chunks were built in.
        chunks: This rank's model stage as ONE chunk: Megatron inference has no interleaved
            schedule (build the generation layout's chunks, see
            :func:`generation_layout`).
        tokenizer: The model's tokenizer.
        prompts: Prompt records, in file order (ids unique).
        out_path: The generations stream (resumed when it exists).
        cfg: The run config (``generation``, ``data``, ``logging.progress``).
        progress: Progress bar on rank 0 (default ``logging.progress``).
        should_stop: Asked on every rank after each committed chunk (collective, e.g. a
            preemption request agreed over the world); True ends the run early, resumable.
        inputs_id: What the model is (``ModelSource.identity``: its content digest), recorded
            with every chunk; a resumed file made by another model is refused.
        hf_dir: The same weights as a Hugging Face folder, which ``generation.engine=vllm``
            samples from (vLLM reads no Megatron checkpoint); the other engines ignore it.

    Returns:
        The run's counts: complete on global rank 0 (see :func:`generate_responses`);
        ``stopped`` when ``should_stop`` ended it before the last chunk.
    """
    from megatron.core.utils import unwrap_model  # lazy: Megatron-Core

    if len(chunks) != 1:
        raise ValueError(
            f"generation runs one model chunk per pipeline rank, got {len(chunks)} (interleaved "
            "PP): build the chunks of generation_layout(cfg.parallel), e.g. from the checkpoint"
        )
    (model,) = unwrap_model(list(chunks))
    backend = build_backend(model, cfg, tokenizer, hf_dir=hf_dir, runtime=runtime)
    with torch.no_grad(), backend:
        return generate_responses(
            runtime, cfg, backend, tokenizer, prompts, out_path, progress=progress,
            should_stop=should_stop, inputs_id=inputs_id,
        )


def generate_responses(
    runtime: Runtime,
    cfg: Config,
    backend: GenerationBackend,
    tokenizer: Tokenizer,
    prompts: Sequence[PromptRecord],
    out_path: str | os.PathLike,
    *,
    progress: bool | None = None,
    should_stop: Callable[[], bool] | None = None,
    inputs_id: str | None = None,
) -> GenerationStats:
    """Answer every prompt ``generation.num_responses`` times; append to ``out_path``.

    Collective over the world (the backend built on every rank). Only global rank 0 writes.

    Args:
        runtime: The parallel runtime (ranks and the data-parallel group).
        cfg: The run config (``generation``, ``data.chat_template``, ``logging.progress``).
        backend: The inference backend of this rank's model stage.
        tokenizer: The model's tokenizer.
        prompts: The prompt records, in file order (ids unique).
        out_path: The generations stream; an existing one is resumed.
        progress: Show the progress bar on rank 0 (default: ``logging.progress``).
        should_stop: See :func:`generate`.
        inputs_id: See :func:`generate`.

    Returns:
        The run's counts: complete on global rank 0; the other ranks fill in only the prompt
        counts known before generating, the time and ``stopped``.

    Raises:
        DataError: more prompts over ``data.max_prompt_length`` than
            ``data.max_truncated_fraction`` allows (every rank measures every prompt before the
            output is opened), the output holds records made with other inputs
            (:func:`generation_inputs`), another ``num_responses`` or prompt text, or it cannot
            be written (a full disk, no permission).
    """
    encoded = PromptEncoder.from_config(cfg, tokenizer).encode_all(prompts)
    inputs = generation_inputs(cfg, inputs_id) if dist.get_rank() == 0 else None
    writer, done = _open_output(out_path, prompts, cfg, inputs)
    try:
        pending = [p for p in prompts if p.id not in done]
        stats = GenerationStats(
            num_prompts=len(prompts), num_prompts_resumed=len(prompts) - len(pending)
        )
        chunks = _ChunkGenerator(runtime, cfg, backend, tokenizer, writer, stats, encoded)
        show = (cfg.logging.progress if progress is None else progress) and writer is not None
        bar = GenerationProgress(len(prompts), stats.num_prompts_resumed, enabled=show)
        start = time.perf_counter()
        size = cfg.generation.chunk_size
        for first in range(0, len(pending), size):
            chunk = pending[first : first + size]
            bar.update(len(chunk), chunks.run(chunk))
            if should_stop is not None and first + size < len(pending) and should_stop():
                stats.stopped = True  # every committed chunk stays; a rerun continues
                break
        stats.seconds = time.perf_counter() - start
        bar.close()
    finally:
        if writer is not None:
            _close(writer)
    dist.barrier()
    return stats


def _close(writer: ChunkedJsonlWriter) -> None:
    """Release the stream; after a failed commit (a full disk) closing retries the unwritten
    bytes and fails again: the uncommitted tail is the next writer's to cut."""
    try:
        writer.close()
    except OSError as error:
        logger.debug("%s: closed after a failed write (%s)", writer.path, error)


class _ChunkGenerator:
    """Generates, gathers and (on global rank 0) commits one chunk of prompts at a time."""

    def __init__(
        self,
        runtime: Runtime,
        cfg: Config,
        backend: GenerationBackend,
        tokenizer: Tokenizer,
        writer: ChunkedJsonlWriter | None,
        stats: GenerationStats,
        encoded: dict[str, EncodedPrompt | None],
    ) -> None:
        gen = cfg.generation
        self.backend, self.tokenizer, self.writer, self.stats = backend, tokenizer, writer, stats
        self.settings = SamplingSettings.from_config(gen)
        self.encoded = encoded
        self.num_responses = gen.num_responses
        self.batch_size = gen.max_batch_size
        self.seed = gen.seed
        self.dp_rank, self.dp_size = runtime.dp_rank, runtime.dp_size
        # the data-parallel group of global rank 0 (TP rank 0, first stage) gathers to it
        self.dp_group = runtime.dp_group
        self.gathers = runtime.tp_rank == 0 and runtime.pp_rank == 0

    def run(self, chunk: Sequence[PromptRecord]) -> int:
        """Generate the chunk; returns the new tokens of its responses (on rank 0; else 0)."""
        encoded = [self.encoded[record.id] for record in chunk]
        kept = [e for e in encoded if e is not None]
        skipped = [r.id for r, e in zip(chunk, encoded, strict=True) if e is None]
        samples = [_Sample(i, j) for i in range(len(kept)) for j in range(self.num_responses)]
        samples.sort(key=lambda s: len(kept[s.prompt].token_ids))  # stable: keeps key order
        mine = samples[self.dp_rank :: self.dp_size]
        results = []
        for first in range(0, len(mine), self.batch_size):
            batch = mine[first : first + self.batch_size]
            seed = _batch_seed(self.seed, [(kept[s.prompt].record.id, s.sample) for s in batch])
            prompts = [kept[s.prompt].token_ids for s in batch]
            completions = self.backend.generate(prompts, self.settings, seed=seed)
            results.extend(zip(batch, completions, strict=True))
        gathered = self._gather(results)
        if self.writer is None:
            return 0
        return self._commit(kept, skipped, gathered)

    def _gather(self, results: list[tuple[_Sample, Completion]]):
        if not self.gathers:
            return None
        if self.dp_size == 1:
            return results
        parts = [None] * self.dp_size if dist.get_rank() == 0 else None
        dist.gather_object(results, parts, dst=0, group=self.dp_group)
        return [item for part in parts or [] for item in part]

    def _commit(self, kept: list[EncodedPrompt], skipped: list[str], gathered) -> int:
        responses = [[None] * self.num_responses for _ in kept]
        for sample, completion in gathered:
            responses[sample.prompt][sample.sample] = finish_response(
                completion, decode=self.tokenizer.decode, stop_strings=self.settings.stop_strings
            )
        records = []
        for prompt, finished in zip(kept, responses, strict=True):
            record = GenerationRecord(
                prompt_id=prompt.record.id,
                prompt=prompt.record.prompt,
                responses=tuple(r.text for r in finished),
                truncated=tuple(r.truncated for r in finished),
            )
            records.append(record_to_json(record))
        num_tokens = sum(r.num_tokens for finished in responses for r in finished)
        num_truncated_prompts = sum(p.truncated for p in kept)
        meta = {"skipped_prompt_ids": skipped, "num_prompts_truncated": num_truncated_prompts}
        try:
            self.writer.commit(records, meta=meta)
        except OSError as error:
            raise _write_error(self.writer.path, error) from error
        s = self.stats
        s.num_prompts_generated += len(kept)
        s.num_prompts_skipped += len(skipped)
        s.num_prompts_truncated += num_truncated_prompts
        s.num_responses += len(kept) * self.num_responses
        s.num_responses_truncated += sum(r.truncated for f in responses for r in f)
        s.num_new_tokens += num_tokens
        return num_tokens


INPUTS_FORMAT = "megatron-scir/generation-inputs"
_CONFIG_KEYS = ("generation.", "data.chat_template", "data.max_prompt_length")


def generation_inputs(cfg: Config, inputs_id: str | None) -> dict:
    """What a chunk's responses depend on besides the prompt: the model (``inputs_id``; None
    when the caller does not name it), the tokenizer's content fingerprint, and the config keys
    (``generation.*`` less batch size, chunk size and engine, which change no response; the chat
    template and the prompt budget). JSON values, as stored."""
    config = select(flat_config(cfg), _CONFIG_KEYS)
    tokenizer = tokenizer_fingerprint(cfg.data) or cfg.data.tokenizer_path
    return json.loads(json.dumps({"model": inputs_id, "tokenizer": tokenizer, "config": config}))


def check_output(
    out_path: str | os.PathLike,
    prompts: Sequence[PromptRecord],
    cfg: Config,
    *,
    inputs_id: str | None = None,
) -> int:
    """Before the model loads: ``out_path`` can be written and locked, and what it holds was
    made by these inputs. Returns how many prompts it already covers (one process: call on
    global rank 0 only).

    Raises:
        DataError: as :func:`generate_responses` would, before any model exists.
    """
    writer = None
    try:
        writer = ChunkedJsonlWriter(out_path)
        return len(_done_prompt_ids(writer, prompts, cfg, generation_inputs(cfg, inputs_id)))
    except OSError as error:
        raise _write_error(out_path, error) from error
    finally:
        if writer is not None:
            writer.close()


def _write_error(path: str | os.PathLike, error: OSError) -> DataError:
    """A one-line error for an output that cannot be written."""
    where = error.filename or path
    return DataError(
        f"{where}: cannot write the generations ({error.strerror or error}): free space or "
        "choose another --out; committed chunks are kept and a rerun continues after them"
    )


def _open_output(
    out_path: str | os.PathLike, prompts: Sequence[PromptRecord], cfg: Config, inputs
) -> tuple[ChunkedJsonlWriter | None, set[str]]:
    """Rank 0 opens (resumes) the stream; every rank learns the prompt ids already done.

    Collective. A problem with the output on rank 0 is raised on every rank, so no rank waits
    for the others forever.
    """
    writer, done, error = None, None, None
    if dist.get_rank() == 0:
        try:
            writer = ChunkedJsonlWriter(out_path)
            done = _done_prompt_ids(writer, prompts, cfg, inputs)
        except (DataError, OSError) as err:
            if writer is not None:
                writer.close()
            error = err if isinstance(err, DataError) else _write_error(out_path, err)
    done, message = _broadcast((done, None if error is None else str(error)))
    if error is not None:
        raise error
    if message is not None:
        raise DataError(message)
    return writer, done


def _done_prompt_ids(
    writer: ChunkedJsonlWriter, prompts: Sequence[PromptRecord], cfg: Config, inputs: dict
) -> set[str]:
    """Prompt ids the output already covers; checks they were made by the same inputs."""
    _check_inputs(writer, inputs)
    records, _ = read_records(writer.path, "generations")
    text = {p.id: p.prompt for p in prompts}
    n = cfg.generation.num_responses
    for record in records:
        if len(record.responses) != n:
            raise DataError(
                f"{record.where}: {len(record.responses)} responses, but this run makes "
                f"generation.num_responses={n}: write to a new --out file"
            )
        if record.prompt_id in text and text[record.prompt_id] != record.prompt:
            raise DataError(
                f"{record.where}: prompt {record.prompt_id!r} was answered for another prompt "
                "text than the prompt file's: write to a new --out file"
            )
    skipped = {i for meta in writer.chunk_metas for i in meta.get("skipped_prompt_ids", [])}
    return {r.prompt_id for r in records} | skipped


def inputs_path(out_path: str | os.PathLike) -> Path:
    """``<out>.inputs.json``: what made the generations stream ``out_path``."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".inputs.json")


def _check_inputs(writer: ChunkedJsonlWriter, inputs: dict) -> None:
    """Record ``inputs`` beside a stream without chunks; refuse a stream with chunks whose
    record differs (or is missing or unreadable)."""
    record = inputs_path(writer.path)
    if writer.num_chunks == 0:
        body = {"format": INPUTS_FORMAT, "version": 1, "inputs": inputs}
        with atomic_open(record) as fh:
            fh.write((json.dumps(body, indent=1, sort_keys=True) + "\n").encode("utf-8"))
        return
    try:
        stored = json.loads(record.read_text(encoding="utf-8"))["inputs"]
    except FileNotFoundError:
        raise DataError(
            f"{writer.path}: {writer.num_chunks} chunk(s) but no {record.name} saying what "
            "made them (written before it was recorded, or moved without it): write to a new "
            "--out file"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(
            f"{record}: unreadable ({error}): cannot tell what made {writer.path}; write to a "
            "new --out file"
        ) from error
    if stored == inputs:
        return
    changes = [
        f"{name}: {_short(stored_value)} -> {_short(now_value)}"
        for name, stored_value, now_value in _differences(stored, inputs)
    ]
    raise DataError(
        f"{writer.path}: made with other inputs, these differ (stored -> now): "
        f"{'; '.join(changes)}; write to a new --out file (or rerun with the stored settings "
        "to continue it)"
    )


def _differences(stored: dict, now: dict):
    for key in ("model", "tokenizer"):
        if stored.get(key) != now.get(key):
            yield key, stored.get(key), now.get(key)
    was, then = stored.get("config", {}), now.get("config", {})
    for key in sorted(set(was) | set(then)):
        if was.get(key) != then.get(key):
            yield key, was.get(key, "<absent>"), then.get(key, "<absent>")


def _short(value) -> str:
    """A stored or current value for a message: SHA-256 digests cut to 12 hex digits."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = re.sub(r"\b([0-9a-f]{12})[0-9a-f]{52}\b", r"\1", text)
    return text if len(text) <= 160 else f"{text[:110]}...{text[-40:]}"


def _broadcast(value):
    """Global rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _batch_seed(seed: int, keys: list[tuple[str, int]]) -> int:
    """A 63-bit sampler seed from the run seed and a batch's (prompt id, sample) keys."""
    digest = hashlib.blake2b(repr((seed, keys)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def generation_layout(parallel: ParallelConfig) -> ParallelConfig:
    """The training layout as Megatron inference runs it: one chunk per rank, no SP.

    Megatron-Core inference has no interleaved schedule, and its static engine refuses sequence
    parallelism for dense models; neither changes which weights a rank holds.
    """
    vpp = parallel.virtual_pipeline_model_parallel_size
    if vpp is not None and vpp > 1:
        logger.info(
            "generation: one chunk per pipeline rank (virtual pipeline size %d unused)", vpp
        )
    if parallel.sequence_parallel:
        logger.info("generation: sequence parallelism off (the static engine does not use it)")
    return dataclasses.replace(
        parallel, virtual_pipeline_model_parallel_size=None, sequence_parallel=False
    )
