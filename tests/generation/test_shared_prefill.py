"""One prefill per prompt: the N samples of a prompt, and the system prompt of a batch, are
prefilled once, and the answers are those of each prompt decoded alone.

A real tiny Megatron Llama (weights from a random transformers folder, std 0.5 so no greedy
argmax is a near-tie) in a one-process gloo world. A forward pre-hook on the embedding records
the token windows every forward pass reads: that is the prefill work, counted where the model
sees it, not in the loop's own bookkeeping.
"""

from __future__ import annotations

import pytest

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

COMMON = [5, 17, 33, 41, 8, 9]  # a "system prompt" both prompts start with
PROMPT_A = COMMON + [60, 61, 62, 63]  # 10 tokens
PROMPT_B = COMMON + [70, 71, 72, 73, 74, 75]  # 12 tokens
N, MAX_NEW = 4, 6


def _run(rank, world_size, hf_dir):
    from megatron_scir.convert import config_from_hf, load_hf_into_model
    from megatron_scir.generation import SamplingSettings
    from megatron_scir.generation.mcore_inference import StaticEngineBackend
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world

    cfg = config_from_hf(hf_dir, "tiny", ["model.transformer_impl=sdpa"])
    windows: list[tuple[int, int]] = []
    with parallel_world(cfg.parallel):
        (model,) = build_model_chunks(cfg)
        load_hf_into_model([model], hf_dir, cfg, progress=False)
        model.embedding.register_forward_pre_hook(
            lambda module, args, kwargs: windows.append(
                tuple((args[0] if args else kwargs["input_ids"]).shape)
            ),
            with_kwargs=True,
        )
        backend = StaticEngineBackend(
            model, eos_id=2, bos_id=1, num_real_tokens=cfg.model.vocab_size,
            max_batch_size=2 * N, max_prompt_length=len(PROMPT_B), max_new_tokens=MAX_NEW,
            decode=lambda ids: "",
        )
        greedy = SamplingSettings.greedy_decoding(MAX_NEW, ignore_eos=True)
        sampled = SamplingSettings(temperature=1.0, max_new_tokens=MAX_NEW, ignore_eos=True)
        out = {}
        with backend:
            batch = [PROMPT_A] * N + [PROMPT_B] * N
            out["batch"] = [c.token_ids for c in backend.generate(batch, greedy, seed=0)]
            out["batch_windows"], windows[:] = list(windows), []
            out["alone"] = [
                backend.generate([p], greedy, seed=0)[0].token_ids for p in (PROMPT_A, PROMPT_B)
            ]
            windows.clear()
            samples = backend.generate([PROMPT_A] * N, sampled, seed=1)
            out["samples"] = [c.token_ids for c in samples]
            out["sample_windows"] = list(windows)
            again = backend.generate([PROMPT_A] * N, sampled, seed=1)
            out["samples_again"] = [c.token_ids for c in again]
        # Transformer Engine's path: no shared common prefix (its attention takes no mask)
        windows.clear()
        with StaticEngineBackend(
            model, eos_id=2, bos_id=1, num_real_tokens=cfg.model.vocab_size,
            max_batch_size=2 * N, max_prompt_length=len(PROMPT_B), max_new_tokens=MAX_NEW,
            decode=lambda ids: "", align_prompts=False,
        ) as plain:
            batch = [PROMPT_A] * N + [PROMPT_B] * N
            out["unshared"] = [c.token_ids for c in plain.generate(batch, greedy, seed=0)]
        out["unshared_windows"] = list(windows)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from megatron_scir.testing.hf import tiny_hf_llama

    hf_dir = tmp_path_factory.mktemp("hf_llama")
    tiny_hf_llama(hf_dir, vocab_size=300, weight_std=0.5, seed=3)
    return run_distributed(_run, 1, args=(str(hf_dir),))[0]


def test_the_common_prefix_and_each_prompt_are_prefilled_once(runs):
    windows = runs["batch_windows"]
    longest = len(PROMPT_B)
    # the system prompt on one row, then the rest of both prompts (left-padded to end
    # together) on one row per prompt
    assert windows[:2] == [(1, len(COMMON)), (2, longest - len(COMMON))]
    decode = windows[2:]
    assert all(width == 1 and rows <= 2 * N for rows, width in decode)
    prefill_tokens = len(COMMON) + 2 * (longest - len(COMMON))
    assert prefill_tokens == 18  # Megatron's loop: 2 N × 10 = 80, then 2 one-token steps
    # every step after the prefill feeds one sampled token per row: no prompt token is fed
    # one step at a time
    assert len(decode) == MAX_NEW - 1


def test_shared_prefill_answers_are_each_prompts_own(runs):
    alone_a, alone_b = runs["alone"]
    assert runs["batch"] == [alone_a] * N + [alone_b] * N
    assert all(len(t) == MAX_NEW for t in runs["batch"])


def test_the_samples_of_one_prompt_share_its_prefill_but_draw_their_own_tokens(runs):
    assert runs["sample_windows"][0] == (1, len(PROMPT_A))  # one prefill for the N samples
    assert len(set(runs["samples"])) > 1  # the forks sample independently
    assert runs["samples_again"] == runs["samples"]  # and a seed gives them again


def test_without_the_common_prefix_each_prompt_is_still_prefilled_once(runs):
    windows = runs["unshared_windows"]
    assert windows[0] == (2, len(PROMPT_A))  # one row per prompt, no split
    # prompts start at position 0: the longer one's last 2 tokens are fed one step at a time
    assert len(windows[1:]) == (len(PROMPT_B) - len(PROMPT_A)) + MAX_NEW - 1
    assert runs["unshared"] == runs["batch"]
