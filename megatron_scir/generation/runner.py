"""Sample N responses per prompt into a resumable JSONL stream (SCIR_SPEC §7.1).

The loop, on every rank of the world:

1. Global rank 0 opens the output as an append-with-commit stream (cutting an interrupted
   writer's uncommitted tail) and broadcasts the prompt ids already done: those with a record
   plus those a committed chunk skipped as too long.
2. The pending prompts, in file order, are cut into chunks of ``generation.chunk_size``. Each
   chunk's prompts are encoded (chat format, long-prompt policy); its ``prompts × N`` requests
   are sorted by prompt length (batches of similar lengths waste fewer decode steps), dealt
   round-robin to the data-parallel replicas and decoded in batches of
   ``generation.max_batch_size``, each batch seeded from the seed and the batch's
   (prompt id, sample index) keys.
3. Rank 0 gathers the replicas' completions, finishes the responses (stop strings, truncation
   flags) and commits the chunk; a chunk is visible only once complete.

A killed run restarted with the same arguments therefore skips exactly the committed chunks and
cuts the rest into the same chunks and batches with the same seeds: the final file equals that
of an uninterrupted run. The same seed, model, prompts and layout give the same responses.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch.distributed as dist

from megatron_scir.config import Config
from megatron_scir.data import (
    ChatFormat,
    ChunkedJsonlWriter,
    DataError,
    GenerationRecord,
    PromptRecord,
    Tokenizer,
    read_records,
    record_to_json,
)
from megatron_scir.generation.backend import Completion, GenerationBackend, finish_response
from megatron_scir.generation.prompts import EncodedPrompt, PromptEncoder
from megatron_scir.generation.settings import SamplingSettings
from megatron_scir.generation.stats import GenerationProgress, GenerationStats

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Sample:
    """One request of a chunk: response ``sample`` of the chunk's ``prompt``-th kept prompt."""

    prompt: int
    sample: int


def generate_responses(
    cfg: Config,
    backend: GenerationBackend,
    tokenizer: Tokenizer,
    prompts: Sequence[PromptRecord],
    out_path: str | os.PathLike,
    *,
    progress: bool | None = None,
) -> GenerationStats:
    """Answer every prompt ``generation.num_responses`` times; append to ``out_path``.

    Collective over the world (Megatron's parallel state initialised, the backend built on every
    rank). Only global rank 0 writes.

    Args:
        cfg: The run config (``generation``, ``data.chat_template``, ``logging.progress``).
        backend: The inference backend of this rank's model stage.
        tokenizer: The model's tokenizer.
        prompts: The prompt records, in file order (ids unique).
        out_path: The generations stream; an existing one is resumed.
        progress: Show the progress bar on rank 0 (default: ``logging.progress``).

    Returns:
        The run's counts: complete on global rank 0; the other ranks fill in only the prompt
        counts known before generating and the time.

    Raises:
        DataError: the output holds records made with another ``num_responses`` or prompt text.
    """
    writer, done = _open_output(out_path, prompts, cfg)
    try:
        pending = [p for p in prompts if p.id not in done]
        stats = GenerationStats(
            num_prompts=len(prompts), num_prompts_resumed=len(prompts) - len(pending)
        )
        chunks = _ChunkGenerator(cfg, backend, tokenizer, writer, stats)
        show = (cfg.logging.progress if progress is None else progress) and writer is not None
        bar = GenerationProgress(len(prompts), stats.num_prompts_resumed, enabled=show)
        start = time.perf_counter()
        size = cfg.generation.chunk_size
        for first in range(0, len(pending), size):
            chunk = pending[first : first + size]
            bar.update(len(chunk), chunks.run(chunk))
        stats.seconds = time.perf_counter() - start
        bar.close()
    finally:
        if writer is not None:
            writer.close()
    dist.barrier()
    return stats


class _ChunkGenerator:
    """Generates, gathers and (on global rank 0) commits one chunk of prompts at a time."""

    def __init__(
        self,
        cfg: Config,
        backend: GenerationBackend,
        tokenizer: Tokenizer,
        writer: ChunkedJsonlWriter | None,
        stats: GenerationStats,
    ) -> None:
        from megatron_scir.parallel import state

        gen = cfg.generation
        self.backend, self.tokenizer, self.writer, self.stats = backend, tokenizer, writer, stats
        self.settings = SamplingSettings.from_config(gen)
        self.encoder = PromptEncoder(
            ChatFormat(cfg.data.chat_template, tokenizer), gen.max_prompt_length, gen.long_prompts
        )
        self.num_responses = gen.num_responses
        self.batch_size = gen.max_batch_size
        self.seed = gen.seed
        self.dp_rank, self.dp_size = state.dp_rank(), state.dp_size()
        # the data-parallel group of global rank 0 (TP rank 0, first stage) gathers to it
        self.dp_group = state.dp_group()
        self.gathers = state.tp_rank() == 0 and state.pp_rank() == 0

    def run(self, chunk: Sequence[PromptRecord]) -> int:
        """Generate the chunk; returns the new tokens of its responses (on rank 0; else 0)."""
        encoded = [self.encoder.encode(record) for record in chunk]
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
        self.writer.commit(
            records,
            meta={"skipped_prompt_ids": skipped, "num_prompts_truncated": num_truncated_prompts},
        )
        s = self.stats
        s.num_prompts_generated += len(kept)
        s.num_prompts_skipped += len(skipped)
        s.num_prompts_truncated += num_truncated_prompts
        s.num_responses += len(kept) * self.num_responses
        s.num_responses_truncated += sum(r.truncated for f in responses for r in f)
        s.num_new_tokens += num_tokens
        return num_tokens


def _open_output(
    out_path: str | os.PathLike, prompts: Sequence[PromptRecord], cfg: Config
) -> tuple[ChunkedJsonlWriter | None, set[str]]:
    """Rank 0 opens (resumes) the stream; every rank learns the prompt ids already done.

    Collective. A problem with the output on rank 0 is raised on every rank, so no rank waits
    for the others forever.
    """
    writer, done, error = None, None, None
    if dist.get_rank() == 0:
        try:
            writer = ChunkedJsonlWriter(out_path)
            done = _done_prompt_ids(writer, prompts, cfg)
        except DataError as err:
            if writer is not None:
                writer.close()
            error = err
    done, message = _broadcast((done, None if error is None else str(error)))
    if error is not None:
        raise error
    if message is not None:
        raise DataError(message)
    return writer, done


def _done_prompt_ids(
    writer: ChunkedJsonlWriter, prompts: Sequence[PromptRecord], cfg: Config
) -> set[str]:
    """Prompt ids the output already covers; checks they were made by a compatible run."""
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


def _broadcast(value):
    """Global rank 0's ``value`` on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _batch_seed(seed: int, keys: list[tuple[str, int]]) -> int:
    """A 63-bit sampler seed from the run seed and a batch's (prompt id, sample) keys."""
    digest = hashlib.blake2b(repr((seed, keys)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
