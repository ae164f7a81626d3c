"""Sampling through Megatron-Core's static engine is seeded, resumable and split over DP ranks.

One 2-process gloo job (TP=1, PP=1, so two data-parallel replicas) with a random tiny Megatron
model and a SentencePiece model trained here; the tests below check its results.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from megatron_scir.generation.runner import inputs_path
from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

NUM_PROMPTS, NUM_RESPONSES, MAX_NEW = 5, 3, 12
PROMPTS = [f"Write a short poem about the sea, number {i}." for i in range(NUM_PROMPTS)]
OVERRIDES = [
    "data.max_prompt_length=64",  # the prompt budget of the backend checks below
    f"generation.num_responses={NUM_RESPONSES}",
    f"generation.max_new_tokens={MAX_NEW}",
    "generation.temperature=1.0",
    "generation.top_p=0.9",
    "generation.chunk_size=2",
    "generation.max_batch_size=4",
    # pad the vocabulary to 288 rows > the tokenizer's 256: padded rows must never be sampled
    "model.make_vocab_size_divisible_by=96",
]


def _kept_first_chunk(src: Path, dst: Path) -> None:
    """``dst`` = ``src`` up to its first commit marker plus a torn line (a killed writer), with
    the record of the inputs that made it (written before the first chunk)."""
    lines = src.read_bytes().splitlines(keepends=True)
    first_commit = next(i for i, line in enumerate(lines) if line.startswith(b'{"__commit__"'))
    dst.write_bytes(b"".join(lines[: first_commit + 1]) + lines[first_commit + 1][:10])
    shutil.copyfile(inputs_path(src), inputs_path(dst))


def _job(rank, world_size, sp_path, out_dir):
    from megatron_scir.config import load_config
    from megatron_scir.data import PromptRecord, SentencePieceTokenizer, read_records
    from megatron_scir.generation import generate_responses
    from megatron_scir.generation.mcore_inference import build_backend
    from megatron_scir.models import build_gpt_model
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", [*OVERRIDES, f"data.tokenizer_path={sp_path}"])
    with parallel_world(cfg.parallel) as runtime:
        torch.manual_seed(0)  # CPU initialisation: both replicas hold the same weights
        model = build_gpt_model(cfg)
        tok = SentencePieceTokenizer(sp_path)
        prompts = [PromptRecord(id=f"p{i}", prompt=text) for i, text in enumerate(PROMPTS)]
        out = Path(out_dir)
        other_seed = dataclasses.replace(
            cfg, generation=dataclasses.replace(cfg.generation, seed=cfg.generation.seed + 1)
        )
        result = {}
        with build_backend(model, cfg, tok) as backend:
            for name, run_cfg in (("a", cfg), ("b", cfg), ("other_seed", other_seed)):
                generate_responses(runtime, run_cfg, backend, tok, prompts, out / f"{name}.jsonl")
            if rank == 0:
                _kept_first_chunk(out / "a.jsonl", out / "resumed.jsonl")
            result["resume"] = generate_responses(
                runtime, cfg, backend, tok, prompts, out / "resumed.jsonl"
            )
            result["backend"] = _backend_checks(backend, tok, prompts[0].prompt)
    if rank == 0:
        for name in ("a", "b", "other_seed", "resumed"):
            result[name] = read_records(out / f"{name}.jsonl", "generations")[0]
    return result


def _backend_checks(backend, tok, prompt_text):
    from megatron_scir.data import ChatFormat
    from megatron_scir.generation import SamplingSettings

    chat = ChatFormat("plain", tok)
    ids = chat.encode(chat.render(prompt_text))
    greedy = SamplingSettings.greedy_decoding(MAX_NEW, ignore_eos=True)
    (full,) = backend.generate([ids], greedy, seed=1)
    # a stop string made of the decoded tokens 3..5 of the greedy output
    stop = tok.decode(full.token_ids[3:6]).strip()
    stopped_settings = dataclasses.replace(greedy, stop_strings=(stop,))
    (stopped,) = backend.generate([ids], stopped_settings, seed=1)
    hot = SamplingSettings(temperature=3.0, max_new_tokens=MAX_NEW, ignore_eos=True)
    sampled = backend.generate([ids] * 4, hot, seed=2)
    return {"full": full, "stop": stop, "stopped": stopped, "hot": sampled}


@pytest.fixture(scope="module")
def job(sp_model_path, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("generations")
    ranks = run_distributed(_job, 2, args=(str(sp_model_path), str(out_dir)))
    yield ranks
    shutil.rmtree(out_dir, ignore_errors=True)


def test_every_prompt_is_written_once_with_n_responses_across_data_parallel_replicas(job):
    records = job[0]["a"]
    assert [r.prompt_id for r in records] == [f"p{i}" for i in range(NUM_PROMPTS)]
    assert all(len(r.responses) == NUM_RESPONSES == len(r.truncated) for r in records)
    assert [r.prompt for r in records] == PROMPTS


def test_the_same_seed_gives_the_same_responses(job):
    assert job[0]["a"] == job[0]["b"]


def test_the_n_samples_of_a_prompt_differ_and_another_seed_changes_them(job):
    for record in job[0]["a"]:
        assert len(set(record.responses)) == NUM_RESPONSES, record.responses
    other = job[0]["other_seed"]
    assert all(a.responses != b.responses for a, b in zip(job[0]["a"], other, strict=True))


def test_a_run_resumed_after_its_first_chunk_ends_equal_to_an_uninterrupted_run(job):
    assert job[0]["resumed"] == job[0]["a"]
    stats = job[0]["resume"]
    assert stats.num_prompts_resumed == 2  # chunk_size prompts were committed before the "kill"
    assert stats.num_prompts_generated == NUM_PROMPTS - 2
    assert stats.num_responses == (NUM_PROMPTS - 2) * NUM_RESPONSES


def test_a_stop_string_ends_the_response_early_and_is_cut_from_the_text(job):
    checks = job[0]["backend"]
    full, stopped = checks["full"], checks["stopped"]
    assert len(full.token_ids) == MAX_NEW
    assert len(stopped.token_ids) < MAX_NEW  # the engine stopped sampling, not only the text
    assert full.token_ids[: len(stopped.token_ids)] == stopped.token_ids
    assert not stopped.hit_eos


def test_padded_vocabulary_rows_are_never_sampled(job):
    for rank in job:
        sampled = rank["backend"]["hot"]
        ids = [t for completion in sampled for t in completion.token_ids]
        assert len(ids) == 4 * MAX_NEW
        assert max(ids) < 256 and len(set(ids)) > 20  # hot sampling, yet only real tokens
