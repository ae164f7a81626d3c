"""A generation run whose prompts would be cut to fit data.max_prompt_length is refused before
the output is opened or a token sampled, naming the count, the longest prompt and the key to
raise; data.max_truncated_fraction lets it truncate, generation.long_prompts=skip skip."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys

import pytest

from megatron_scir.config import load_config
from megatron_scir.data import DataError, build_tokenizer, read_records
from megatron_scir.generation import PromptEncoder
from megatron_scir.generation.runner import generate_responses

SHORT = "What is the capital of France?"
LONG = "Please explain why the sky is blue in simple words for a child. "


def _prompts(tmp_path, long_ids=(2, 5, 7), n=10):
    """n prompts; those in long_ids are longer than 32 tokens (p7 the longest)."""
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"id": f"p{i}", "prompt": LONG * (2 + i // 3) if i in long_ids else SHORT} for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, read_records(path, "prompts")[0]


def _encoder(sp_model_path, *overrides):
    cfg = load_config("tiny", [f"data.tokenizer_path={sp_model_path}", *overrides])
    return cfg, PromptEncoder.from_config(cfg, build_tokenizer(cfg.data))


def test_a_pool_with_3_of_10_prompts_over_the_budget_is_refused_with_count_longest_and_key(
    tmp_path, sp_model_path
):
    path, prompts = _prompts(tmp_path)
    _, encoder = _encoder(sp_model_path)
    with pytest.raises(DataError) as refused:
        encoder.encode_all(prompts)
    message = str(refused.value)
    assert message.startswith("3 of 10 prompts (30.0%) do not fit the token budgets")
    match = re.search(r"over data.max_prompt_length=32: (\S+) \(id 'p7'\), (\d+) tokens", message)
    assert match and match[1] == f"{path}:8", message
    tokens = int(match[2])
    assert tokens == len(encoder.chat.encode(encoder.chat.render(prompts[7].prompt))) > 32
    assert f"Raise data.max_prompt_length to {tokens} " in message
    assert "set generation.long_prompts=skip to skip them" in message
    assert "set data.max_truncated_fraction=0.3 to cut them to fit" in message


def test_the_explicit_fraction_truncates_the_long_prompts_and_warns_up_front(
    tmp_path, sp_model_path, caplog
):
    _, prompts = _prompts(tmp_path)
    _, encoder = _encoder(sp_model_path, "data.max_truncated_fraction=0.3")
    with caplog.at_level(logging.WARNING):
        encoded = encoder.encode_all(prompts)
    assert [p.id for p in prompts if encoded[p.id].truncated] == ["p2", "p5", "p7"]
    assert all(len(e.token_ids) <= 32 for e in encoded.values())
    assert "3 of 10 prompts (30.0%) do not fit the token budgets and are cut" in caplog.text


def test_skip_skips_the_long_prompts_with_a_warning_and_refuses_to_skip_them_all(
    tmp_path, sp_model_path, caplog
):
    _, prompts = _prompts(tmp_path)
    _, encoder = _encoder(sp_model_path, "generation.long_prompts=skip")
    with caplog.at_level(logging.WARNING):
        encoded = encoder.encode_all(prompts)
    assert [p.id for p in prompts if encoded[p.id] is None] == ["p2", "p5", "p7"]
    assert "3 of 10 prompts are over data.max_prompt_length=32" in caplog.text
    _, every = _prompts(tmp_path, long_ids=range(4), n=4)
    with pytest.raises(DataError, match="would skip every prompt. Raise data.max_prompt_length"):
        encoder.encode_all(every)


class _NoSampling:
    def generate(self, *args, **kwargs):
        raise AssertionError("a refused run samples nothing")


def test_generation_refuses_before_it_opens_the_output_or_samples_a_token(tmp_path, sp_model_path):
    _, prompts = _prompts(tmp_path)
    cfg, encoder = _encoder(sp_model_path)
    out = tmp_path / "generations.jsonl"
    with pytest.raises(DataError, match="3 of 10 prompts"):
        # no world, no model: the refusal comes first
        generate_responses(None, cfg, _NoSampling(), encoder.chat.tokenizer, prompts, out)
    assert not out.exists()


def test_scir_generate_refuses_long_prompts_with_exit_2_and_writes_nothing(tmp_path):
    from megatron_scir.testing.hf import tiny_hf_llama

    hf_dir = tmp_path / "hf"
    tiny_hf_llama(hf_dir, tokenizer=True)
    path, _ = _prompts(tmp_path)
    out = tmp_path / "g.jsonl"
    cmd = [sys.executable, "-m", "megatron_scir.cli", "generate", "--hf-dir", str(hf_dir)]
    cmd += ["--prompts", str(path), "--out", str(out), "--no-progress"]
    cmd += ["data.max_prompt_length=32", "generation.max_new_tokens=4"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "scir generate: error: 3 of 10 prompts (30.0%) do not fit" in done.stderr
    assert "Raise data.max_prompt_length to " in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
