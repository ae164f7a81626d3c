"""The GPU paths (vLLM, static-engine CUDA graphs, the dynamic engine) are refused with one line
through the real ``scir generate`` where they cannot run, and never import vLLM to say so.

On a machine with CUDA and vLLM (or flash-attn) the refusals do not happen: those tests skip
and ``scripts/gpu_check.py`` exercises the paths instead.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from megatron_scir.cli import main as scir_main
from megatron_scir.generation import SamplingSettings
from megatron_scir.generation.cuda_graphs import cuda_graph_blockers
from megatron_scir.generation.vllm_backend import (
    completion_of,
    request_seed,
    sampling_arguments,
    vllm_blockers,
)

VLLM_RUNS = torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None
needs_vllm_refusal = pytest.mark.skipif(VLLM_RUNS, reason="CUDA and vllm present: not refused")
needs_graph_refusal = pytest.mark.skipif(
    not cuda_graph_blockers(), reason="CUDA and flash-attn present: not refused"
)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from megatron_scir.testing.hf import tiny_hf_llama

    path = tmp_path_factory.mktemp("gpu-paths") / "hf"
    tiny_hf_llama(path, tokenizer=True)
    return path


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": "Hi"}) + "\n" for i in (1, 2)))
    return path


def _generate(hf_dir, prompts, out, *overrides: str) -> int:
    argv = ["generate", "--hf-dir", str(hf_dir), "--prompts", str(prompts), "--out", str(out)]
    return scir_main([*argv, "--no-progress", "generation.max_new_tokens=4", *overrides])


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("scir generate: error:")]
    assert len(lines) == 1, err
    return lines[0]


@needs_vllm_refusal
def test_engine_vllm_is_refused_in_one_line_naming_the_missing_cuda_and_pip_command(
    hf_dir, prompts, tmp_path, capsys
):
    assert _generate(hf_dir, prompts, tmp_path / "g.jsonl", "generation.engine=vllm") == 2
    line = _error_line(capsys.readouterr().err)
    assert "generation.engine=vllm cannot run here:" in line
    if not torch.cuda.is_available():
        assert "no CUDA device" in line
    if importlib.util.find_spec("vllm") is None:
        assert "pip install 'megatron-scir[vllm]'" in line
    assert "vllm" not in sys.modules  # the refusal looks for the package without importing it
    assert not (tmp_path / "g.jsonl").exists()  # refused before the output or the model


def test_engine_vllm_with_pipeline_parallelism_is_refused_before_the_model_loads(
    hf_dir, prompts, tmp_path, capsys
):
    overrides = ("generation.engine=vllm", "parallel.pipeline_model_parallel_size=2")
    assert _generate(hf_dir, prompts, tmp_path / "g.jsonl", *overrides) == 2
    line = _error_line(capsys.readouterr().err)
    assert "generation.engine=vllm with parallel.pipeline_model_parallel_size=2" in line
    assert "parallel.pipeline_model_parallel_size=1" in line
    assert not (tmp_path / "g.jsonl").exists()


def test_engine_dynamic_is_still_refused_in_one_line_with_its_blockers(
    hf_dir, prompts, tmp_path, capsys
):
    assert _generate(hf_dir, prompts, tmp_path / "g.jsonl", "generation.engine=dynamic") == 2
    line = _error_line(capsys.readouterr().err)
    assert "generation.engine=dynamic cannot run here:" in line
    assert "no dynamic-engine backend" in line


@needs_graph_refusal
def test_cuda_graphs_are_refused_in_one_line_naming_what_is_missing(hf_dir, prompts, tmp_path):
    """Through the real command in its own process (the refusal comes from the backend, inside
    the parallel world, after the model loaded): exit status 2, one line, no traceback."""
    cmd = [sys.executable, "-m", "megatron_scir.cli", "generate", "--hf-dir", str(hf_dir)]
    cmd += ["--prompts", str(prompts), "--out", str(tmp_path / "g.jsonl"), "--no-progress"]
    cmd += ["generation.max_new_tokens=4", "generation.cuda_graphs=true"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    line = _error_line(done.stderr)
    assert "generation.cuda_graphs=true cannot run here:" in line
    for blocker in cuda_graph_blockers():
        assert blocker in line
    assert "Traceback" not in done.stderr


def test_the_refusals_list_what_this_machine_lacks():
    assert ("no CUDA device" in vllm_blockers()) is not torch.cuda.is_available()
    assert ("no CUDA device" in cuda_graph_blockers()) is not torch.cuda.is_available()


def test_each_request_gets_its_own_seed_and_a_rerun_the_same_ones():
    seeds = [request_seed(1234, i) for i in range(8)]
    assert len(set(seeds)) == 8 and seeds == [request_seed(1234, i) for i in range(8)]
    assert request_seed(1235, 0) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)


def test_vllm_samples_with_the_runs_settings():
    greedy = sampling_arguments(
        SamplingSettings.greedy_decoding(16), (2, 7), detokenizes=True
    )
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == -1 and greedy["top_p"] == 1.0
    assert greedy["max_tokens"] == 16 and greedy["stop_token_ids"] == [2, 7]
    assert greedy["stop"] is None and not greedy["detokenize"]
    nucleus = SamplingSettings(temperature=0.7, top_p=0.9, stop_strings=("</s>",))
    args = sampling_arguments(nucleus, (2,), detokenizes=True)
    assert (args["temperature"], args["top_p"], args["top_k"]) == (0.7, 0.9, -1)
    assert args["stop"] == ["</s>"] and args["detokenize"]
    # without a tokenizer in the folder the runner cuts stop strings afterwards
    assert sampling_arguments(nucleus, (2,), detokenizes=False)["stop"] is None
    top_k = sampling_arguments(SamplingSettings(temperature=1.0, top_k=20), (2,), detokenizes=False)
    assert (top_k["top_k"], top_k["top_p"]) == (20, 1.0)
    fixed = sampling_arguments(
        SamplingSettings.greedy_decoding(8, ignore_eos=True), (2,), detokenizes=False
    )
    assert fixed["ignore_eos"] and fixed["stop_token_ids"] == []


def test_a_vllm_output_becomes_the_runners_completion():
    stop = {2, 7}
    by_eos = completion_of([5, 6, 2], "stop", None, stop_ids=stop, ignore_eos=False)
    assert by_eos.token_ids == (5, 6) and by_eos.hit_eos
    by_turn_end = completion_of([5, 7], "stop", 7, stop_ids=stop, ignore_eos=False)
    assert by_turn_end.token_ids == (5,) and by_turn_end.hit_eos
    by_string = completion_of([5, 9], "stop", "</s>", stop_ids=stop, ignore_eos=False)
    assert by_string.token_ids == (5, 9) and not by_string.hit_eos
    by_budget = completion_of([5, 9, 9], "length", None, stop_ids=stop, ignore_eos=False)
    assert by_budget.token_ids == (5, 9, 9) and not by_budget.hit_eos
    fixed = completion_of([5, 2], "length", None, stop_ids=stop, ignore_eos=True)
    assert fixed.token_ids == (5, 2) and not fixed.hit_eos


def test_engine_vllm_from_a_megatron_checkpoint_is_refused_naming_the_export(
    hf_dir, prompts, tmp_path, capsys
):
    convert = ["convert", "hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "ckpt")]
    assert scir_main([*convert, "--no-progress"]) == 0
    capsys.readouterr()
    argv = ["generate", "--ckpt", str(tmp_path / "ckpt"), "--prompts", str(prompts),
            "--out", str(tmp_path / "g.jsonl"), "--no-progress", "generation.engine=vllm"]
    assert scir_main(argv) == 2
    line = _error_line(capsys.readouterr().err)
    assert "generation.engine=vllm samples from a Hugging Face folder" in line
    assert "scir convert mcore-to-hf" in line
    assert not (tmp_path / "g.jsonl").exists()


@needs_vllm_refusal
def test_engine_vllm_in_the_self_rewarding_loop_is_refused_before_any_stage(tmp_path, capsys):
    from megatron_scir.config import load_config, validate
    from megatron_scir.config.validate import SELF_REWARDING
    from megatron_scir.tasks.arithmetic import write_task_files

    # the config is fine for the loop (its generate stage samples from M_t's HF folder) ...
    validate(load_config("tiny", ["generation.engine=vllm"]), uses=(SELF_REWARDING,))
    # ... this machine is not: refused in one line before the run directory is made
    task = write_task_files(tmp_path, num_sft=8, num_judge=8, num_prompts=8, max_operand=3)
    run_dir = tmp_path / "run"
    argv = ["iterate", "--config", "tiny", "--no-progress", f"iteration.run_dir={run_dir}"]
    argv += [f"data.prompts={task.prompts}", f"data.seed_sft={task.seed_sft}"]
    argv += [f"data.seed_judge={task.seed_judge}", f"data.tokenizer_path={task.tokenizer}"]
    assert scir_main([*argv, "generation.engine=vllm"]) == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("scir iterate: error:")]
    assert len(lines) == 1
    assert "generation.engine=vllm cannot run here: " + "; ".join(vllm_blockers()) in lines[0]
    assert not run_dir.exists()


def test_the_loop_samples_with_vllm_from_the_last_export_or_one_written_for_the_stage(
    hf_dir, tmp_path
):
    """The folder ``generation.engine=vllm`` samples M_t from in ``scir iterate``: the previous
    iteration's export as it is, else the checkpoint exported once, whole, and loadable by
    transformers with the run's tokenizer (vLLM reads the same files)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_scir.config import load_config
    from megatron_scir.iteration.driver import POLICY_HF, policy_hf_folder

    ckpt = tmp_path / "ckpt"
    convert = ["convert", "hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(ckpt)]
    assert scir_main([*convert, "--no-progress"]) == 0
    cfg = load_config("tiny", [f"data.tokenizer_path={hf_dir}", "data.tokenizer_type=hf"])
    stage = tmp_path / "generate"
    stage.mkdir()
    assert policy_hf_folder(cfg, str(ckpt), stage, "/runs/iter_1/export/hf") == (
        "/runs/iter_1/export/hf"
    )
    assert not list(stage.iterdir())  # nothing written when the export exists

    folder = policy_hf_folder(cfg, str(ckpt), stage, None)
    assert folder == str(stage / POLICY_HF)
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    with torch.no_grad():
        ours = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
        theirs = AutoModelForCausalLM.from_pretrained(hf_dir).eval()(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert AutoTokenizer.from_pretrained(folder).encode("Hi") == (
        AutoTokenizer.from_pretrained(hf_dir).encode("Hi")
    )
    written = (stage / POLICY_HF / "config.json").stat().st_mtime_ns
    assert policy_hf_folder(cfg, str(ckpt), stage, None) == folder  # a rerun reuses it
    assert (stage / POLICY_HF / "config.json").stat().st_mtime_ns == written
