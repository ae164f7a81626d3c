"""``scir generate`` validates its inputs before any model exists and imports lazily."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from megatron_scir.cli import main as scir_main


def main(argv: list[str]) -> int:
    return scir_main(["generate", *argv])


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _generate(tmp_path, prompts, *extra):
    argv = ["--ckpt", str(tmp_path / "no-ckpt"), "--prompts", str(prompts)]
    return main([*argv, "--out", str(tmp_path / "out.jsonl"), *extra])


@pytest.mark.parametrize(
    ("lines", "where"),
    [
        (
            ['{"id": "a", "prompt": "hi"}', '{"id": "b", "prompt": "yo"}', '{"id": "c", "prompt"'],
            ":3: malformed JSON",
        ),
        (['{"id": "a", "prompt": "hi"}', '{"id": "a", "prompt": "again"}'], ":2: duplicate id"),
        (['{"id": "a"}'], ":1: missing field: missing field 'prompt'"),
    ],
    ids=["malformed_json", "duplicate_id", "missing_field"],
)
def test_a_bad_prompt_file_fails_with_file_and_line(tmp_path, capsys, lines, where):
    prompts = _write(tmp_path / "prompts.jsonl", lines)
    assert _generate(tmp_path, prompts) == 2
    err = capsys.readouterr().err
    assert f"scir generate: error: {prompts}{where}" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_missing_prompt_file_and_a_missing_model_source_are_reported(tmp_path, capsys):
    assert _generate(tmp_path, tmp_path / "nope.jsonl") == 2
    assert "nope.jsonl does not exist" in capsys.readouterr().err
    prompts = _write(tmp_path / "p.jsonl", [json.dumps({"id": 1, "prompt": "hi"})])
    argv = ["--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    assert main(argv) == 2
    assert "pass --ckpt DIR" in capsys.readouterr().err


def test_ckpt_and_hf_dir_are_mutually_exclusive(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["--ckpt", "a", "--hf-dir", "b", "--prompts", "p", "--out", "o"])
    assert exit_info.value.code == 2


def test_generation_runs_a_training_layout_without_virtual_stages_or_sequence_parallelism():
    from megatron_scir.config import ParallelConfig
    from megatron_scir.generation import generation_layout

    training = ParallelConfig(
        tensor_model_parallel_size=2,
        pipeline_model_parallel_size=2,
        virtual_pipeline_model_parallel_size=2,
        sequence_parallel=True,
    )
    layout = generation_layout(training)
    assert (layout.tensor_model_parallel_size, layout.pipeline_model_parallel_size) == (2, 2)
    assert layout.virtual_pipeline_model_parallel_size is None and not layout.sequence_parallel


def test_importing_the_package_and_the_command_does_not_import_megatron_core():
    code = (
        "import sys, megatron_scir.generation, megatron_scir.cli, megatron_scir.cli.generate; "
        "print([m for m in sys.modules if m.startswith('megatron.core')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_hf_dir_generates_with_the_folders_own_tokenizer(tmp_path):
    from megatron_scir.data import read_records
    from megatron_scir.testing.hf import tiny_hf_llama

    hf_dir = tmp_path / "hf"
    tiny_hf_llama(hf_dir, tokenizer=True)
    prompts = _write(tmp_path / "p.jsonl", [json.dumps({"id": i, "prompt": "Hi"}) for i in (1, 2)])
    out = tmp_path / "g.jsonl"
    cmd = [sys.executable, "-m", "megatron_scir.cli", "generate", "--hf-dir", str(hf_dir)]
    cmd += ["--prompts", str(prompts), "--out", str(out), "--no-progress"]
    cmd += ["generation.num_responses=2", "generation.max_new_tokens=6"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "2 prompts answered" in done.stdout and "4 responses" in done.stdout
    records = read_records(out, "generations")[0]
    assert [(r.prompt_id, len(r.responses)) for r in records] == [("1", 2), ("2", 2)]


def test_ckpt_alone_gives_the_model_shape_and_tokenizer_and_matches_the_hf_dir_run(tmp_path):
    """A checkpoint converted from an HF folder carries its model config and tokenizer: ``--ckpt``
    needs no model overrides and greedy decoding writes what ``--hf-dir`` writes."""
    from megatron_scir.testing.hf import tiny_hf_llama

    hf_dir, ckpt = tmp_path / "hf", tmp_path / "ckpt"
    tiny_hf_llama(hf_dir, tokenizer=True)  # hidden 64: not the tiny preset's shape
    convert = [sys.executable, "-m", "megatron_scir.cli", "convert", "hf-to-mcore"]
    done = subprocess.run(
        [*convert, "--hf-dir", str(hf_dir), "--out", str(ckpt)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    prompts = _write(tmp_path / "p.jsonl", [json.dumps({"id": i, "prompt": "Hi"}) for i in (1, 2)])
    outputs = []
    for source in (["--hf-dir", str(hf_dir)], ["--ckpt", str(ckpt)]):
        out = tmp_path / f"g{len(outputs)}.jsonl"
        cmd = [sys.executable, "-m", "megatron_scir.cli", "generate", *source, "--no-progress"]
        cmd += ["--prompts", str(prompts), "--out", str(out)]
        cmd += [
            "generation.temperature=0",
            "generation.num_responses=1",
            "generation.max_new_tokens=6",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1]
