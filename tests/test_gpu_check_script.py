"""scripts/gpu_check.sh / gpu_check.py, the one-command GPU check (docs/gpu.md), on CPU.

What runs here: the plan (``--dry-run``), the report writer, the carried-parts staging, the
SmolLM2 constants it shares with the real-model test, and one real ``run`` that stops at the env
probe. The checks themselves need a GPU and are not run by the suite.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def test_the_dry_run_prints_every_check_and_its_command_without_a_gpu(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "SCIR_GPU_STAGE": str(tmp_path)}
    for flag in ("--dry-run", "--check-only"):
        done = subprocess.run(
            ["bash", str(SCRIPT), flag], capture_output=True, text=True, timeout=60, env=env
        )
        assert done.returncode == 0, done.stderr
        plan = done.stdout
        for check in gpu_check.CHECKS:
            item = f" ({check.item})" if check.item else ""
            assert f"- {check.name}{item}, budget {check.budget_s} s:" in plan, check.name
        for needle in (
            "scripts/gpu_check_ties.py --impls local,sdpa",  # (b)
            "benchmarks/bench_step.py --shape medium --dtype bfloat16",  # (c)
            "benchmarks/bench_generation.py --shape 1b --dtype bfloat16",  # (d)
            "scripts/gpu_check_ties.py --impls te",  # (e)
            "--nproc-per-node 2",  # (f)
            "worker-smollm2",  # (a)
            "SmolLM2 prompts: 16 from tests/real_models/test_smollm2.py, 24 new tokens each",
            "TE not installed: skipped",
            "pip install -q --no-index",
            "deadline: 540 s",
        ):
            assert needle in plan, needle


def test_the_dry_run_imports_neither_torch_nor_megatron():
    code = (
        "import runpy, sys\n"
        f"sys.argv = ['gpu_check.py', 'run', '--dry-run']\n"
        "try:\n"
        f"    runpy.run_path({str(ROOT / 'scripts' / 'gpu_check.py')!r}, run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'megatron', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_only_refuses_unknown_checks():
    assert gpu_check.main(["run", "--dry-run", "--only", "ties,nope"]) == 2


def test_the_report_is_one_markdown_table_with_a_verdict():
    Row = gpu_check.Row
    rows = [
        Row("env", "pass", "NVIDIA H100 80GB HBM3 ×1", 3.04, 60),
        Row("smollm2", "pass", "bfloat16; local: 16/16 identical", 95.5, 240),
        Row("ties", "fail", "gpu_check_ties.py exit 1: a | b", 41.0, 120),
        Row("te", "skipped", "TE not installed: skipped", 0, 120),
    ]
    report = gpu_check.markdown_report(rows, title="GPU check", environment="H100 · torch 2.11")
    assert report == (
        "# GPU check\n"
        "\n"
        "H100 · torch 2.11\n"
        "\n"
        "| check | result | seconds | budget s |\n"
        "|---|---|---|---|\n"
        "| env | **pass**: NVIDIA H100 80GB HBM3 ×1 | 3.0 | 60 |\n"
        "| (a) smollm2 | **pass**: bfloat16; local: 16/16 identical | 95.5 | 240 |\n"
        "| (b) ties | **fail**: gpu_check_ties.py exit 1: a \\| b | 41.0 | 120 |\n"
        "| (e) te | **skipped**: TE not installed: skipped | 0.0 | 120 |\n"
        "\n"
        "**FAILED: ties** 3 ran, 1 skipped (te); 140 s in all.\n"
    )
    assert not gpu_check.all_ran_passed(rows)
    assert gpu_check.all_ran_passed([rows[0], rows[3]])
    with pytest.raises(ValueError, match="status"):
        Row("env", "ok", "", 0)


def test_the_smollm2_check_uses_the_real_model_tests_prompts_and_budget():
    from tests.real_models import test_smollm2

    constants = gpu_check.smollm2_test_constants()
    assert constants["PROMPTS"] == test_smollm2.PROMPTS
    assert constants["MAX_NEW_TOKENS"] == test_smollm2.MAX_NEW_TOKENS
    assert constants["NEAR_TIE"] == test_smollm2.NEAR_TIE


def test_the_carried_megatron_core_wheel_is_the_pinned_one():
    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements" / "ci.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert gpu_check.WHEELS["megatron-core"] == pins["megatron-core"]


def test_parts_carried_over_two_calls_are_staged_then_assembled(tmp_path):
    source = tmp_path / "model.whl"
    source.write_bytes(bytes(range(256)) * 1000 + b"tail")
    split = tmp_path / "split"
    manifest = gpu_check.split_into_parts(source, split, "m", 100_000, "pkg-1/model.whl")
    assert [p["name"] for p in manifest["parts"]] == ["m.part1of3", "m.part2of3", "m.part3of3"]
    assert sum(p["size"] for p in manifest["parts"]) == source.stat().st_size
    stage, cache = tmp_path / "stage", tmp_path / "cache"
    calls = [["m.part1of3"], ["m.part2of3", "m.part3of3"]]
    for number, names in enumerate(calls):
        carry = tmp_path / f"call{number}"
        carry.mkdir()
        for name in ["m.manifest.json", *names]:
            (carry / name).write_bytes((split / name).read_bytes())
        assert gpu_check.stage_parts(carry, stage, "m") == [f"staged {n}" for n in names]
        complete, what = gpu_check.assemble_parts(stage, cache, "m")
        assert complete == (number == 1), what
    assert (cache / "pkg-1" / "model.whl").read_bytes() == source.read_bytes()
    assert gpu_check.assemble_parts(stage, cache, "m") == (True, f"{cache}/pkg-1/model.whl present")


def test_a_damaged_part_is_not_staged(tmp_path):
    source = tmp_path / "model.whl"
    source.write_bytes(b"x" * 5000)
    carry = tmp_path / "carry"
    gpu_check.split_into_parts(source, carry, "m", 3000, "model.whl")
    (carry / "m.part2of2").write_bytes(b"y" * 2500)
    notes = gpu_check.stage_parts(carry, tmp_path / "stage", "m")
    assert notes == [
        "staged m.part1of2",
        "m.part2of2: sha256 differs from the manifest; not staged",
    ]
    complete, what = gpu_check.assemble_parts(tmp_path / "stage", tmp_path / "cache", "m")
    assert not complete and "1 of 2 parts staged" in what


def test_a_run_writes_the_table_and_its_exit_status_says_whether_all_ran_checks_passed(tmp_path):
    """A real ``run --only te`` (env probe, then (e)): on CPU the env row fails (no CUDA) and
    (e) is skipped; on a GPU machine without TE both pass / skip. Either way the files exist."""
    out = tmp_path / "out"
    command = ["bash", str(SCRIPT), "--only", "te", "--out", str(out)]
    command += ["--carry-dir", str(tmp_path / "nothing-carried")]
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHON": sys.executable,
        "HOME": str(tmp_path),
        "SCIR_GPU_STAGE": str(tmp_path / "stage"),
        "SCIR_MODEL_CACHE": str(tmp_path / "models"),
    }
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    report = json.loads((out / "gpu_check.json").read_text())
    rows = {row["check"]: row for row in report["rows"]}
    assert list(rows) == ["install", "env", "te"]
    assert rows["install"]["status"] == "pass"  # nothing carried: nothing to install
    assert rows["te"]["status"] == "skipped"
    assert done.returncode == (0 if report["all_ran_passed"] else 1), done.stdout[-2000:]
    assert report["all_ran_passed"] == (rows["env"]["status"] == "pass")
    table = (out / "gpu_check.md").read_text()
    assert "| check | result | seconds | budget s |" in table and "| (e) te | **skipped**" in table
    assert "===== env:" in (out / "gpu_check.log").read_text()


def test_the_generation_check_reports_each_faster_engine_or_why_it_did_not_run():
    gpu_check = _load()
    output = "\n".join([
        "| short | 1 | 105.4 (483 in 4.6 s) | 83.0 (483 in 5.8 s) | 92.2 (483 in 5.2 s) "
        "| 1.14× | 1.27× | 16/16 (before 16) |",
        "| engine | prompts | N | tok/s | transformers tok/s | vs transformers "
        "| greedy = transformers |",
        "|---|---|---|---|---|---|---|",
        "| vllm | short | 1 | 950.0 (483 in 0.5 s) | 92.2 | 10.30× | 15/16 |",
        "| vllm | short | 8 | failed: RuntimeError: out of memory | - | - | - |",
        "| cuda_graphs | - | - | skipped: no CUDA device; flash-attn is not installed "
        "| - | - | - |",
    ])
    rows = gpu_check.parse_engine_rows(output)
    assert [r["engine"] for r in rows] == ["vllm", "vllm", "cuda_graphs"]
    assert len(gpu_check.parse_chat_generation(output)) == 1  # the main table is unchanged
    assert [gpu_check.engine_text(r) for r in rows] == [
        "vllm short N=1: 10.30× of transformers, greedy equal 15/16",
        "vllm: failed: RuntimeError: out of memory",
        "cuda_graphs: skipped: no CUDA device; flash-attn is not installed",
    ]
