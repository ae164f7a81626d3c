"""Empty inputs and identical-response pairs: one line naming the file, or dropped and counted.

- An input file (prompts, seed SFT, seed judge, pairs) with no record left is a one-line
  ``DataError`` naming the file, at the reader (so every command and stage that reads one), and
  through the commands: ``scir generate --prompts``, ``scir train --pairs`` and ``scir iterate``'s
  prompt pool, seed SFT, seed judge and evaluation files (exit 2, before any stage runs).
- A pair whose two responses are the same text is dropped and counted at load.
- ``scir iterate``'s advice to lower the batch size (a seed SFT set smaller than one global
  batch) is accepted by the rerun.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_scir.data import read_records
from megatron_scir.data.errors import DataError

PROMPT = {"id": "p1", "prompt": "What is 1+1?"}
SFT = {"prompt": "What is 1+1?", "response": "2"}
JUDGE = {"prompt": "What is 1+1?", "response_a": "2", "response_b": "3", "verdict": "A"}
PAIR = {"pair_id": "a", "prompt_id": "p1", "prompt": "What is 1+1?", "response_1": "2",
        "response_2": "3", "label": 1}


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["prompts", "sft", "judge", "pairs"])
@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "the file is empty"),
        ("\n  \n\r\n", "the file is empty"),
        ('{"broken"\n', "1 line(s) skipped as bad (1 malformed JSON)"),
    ],
    ids=["empty", "blank_lines", "all_skipped"],
)
def test_an_input_file_with_no_record_is_one_line_naming_it(tmp_path, kind, text, why):
    path = _write(tmp_path / f"{kind}.jsonl", text)
    with pytest.raises(DataError) as error:
        read_records(path, kind, on_bad_record="skip")
    message = str(error.value)
    assert message == (
        f"{path}: no {kind} records ({why}): expected one JSON object per line"
    )
    assert "\n" not in message


def test_an_empty_generations_stream_reads_as_nothing_yet(tmp_path):
    # a resumable generation output starts empty: not an input file
    assert read_records(_write(tmp_path / "g.jsonl", ""), "generations")[0] == []


def test_pairs_with_identical_responses_are_dropped_and_counted_at_load(tmp_path, caplog):
    rows = [
        PAIR,
        {**PAIR, "pair_id": "same", "response_2": "2"},
        {**PAIR, "pair_id": "same-but-spaces", "response_1": " 2\n", "response_2": "2"},
    ]
    path = _write(tmp_path / "pairs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level(logging.WARNING, logger="megatron_scir"):
        pairs, report = read_records(path, "pairs")
    assert [p.pair_id for p in pairs] == ["a"]
    assert report.num_identical == 2 and report.num_records == 1 and report.num_skipped == 0
    assert "2 pair(s) with identical responses dropped" in report.summary()
    assert "identical responses dropped" in caplog.text
    only_identical = _write(tmp_path / "same.jsonl", json.dumps(rows[1]) + "\n")
    with pytest.raises(DataError, match="no pairs records \\(1 pair\\(s\\) with identical"):
        read_records(only_identical, "pairs")


# ------------------------------------------------------------------ through the commands


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

    good = {
        "prompts": [dict(PROMPT, id=f"p{i}") for i in range(4)],
        "sft": [SFT] * 4,
        "judge": [JUDGE] * 4,
        "pairs": [dict(PAIR, pair_id=f"a{i}") for i in range(4)],
    }
    out = {"tokenizer": train_tiny_sentencepiece(root / "sp")}
    out["empty"] = _write(root / "e.jsonl", "")
    for kind, rows in good.items():
        out[kind] = _write(root / f"{kind}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return out


def _scir(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "megatron_scir.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _one_line_error(done: subprocess.CompletedProcess, command: str, path: Path) -> None:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if f"scir {command}: error:" in line]
    assert len(errors) == 1, done.stderr[-3000:]
    assert errors[0].startswith(f"scir {command}: error: {path}: no "), errors[0]
    assert "the file is empty" in errors[0]


def _iterate_args(files, run_dir: Path, *extra: str) -> list[str]:
    return [
        "iterate", "--config", "tiny", "--no-progress",
        f"data.tokenizer_path={files['tokenizer']}",
        f"data.prompts={files['prompts']}",
        f"data.seed_sft={files['sft']}",
        f"data.seed_judge={files['judge']}",
        f"iteration.run_dir={run_dir}",
        "iteration.num_iterations=0",
        "logging.tensorboard=false",
        *extra,
    ]


@pytest.mark.parametrize(
    "key", ["data.prompts", "data.seed_sft", "data.seed_judge", "iteration.eval_pairs",
            "iteration.eval_prompts"],
)
def test_scir_iterate_refuses_an_empty_input_before_any_stage(files, tmp_path, key):
    run_dir = tmp_path / "run"
    extra = [f"{key}={files['empty']}"]
    if key == "iteration.eval_prompts":
        extra.append("iteration.grader=megatron_scir.tasks.arithmetic:grade")
    done = _scir(*_iterate_args(files, run_dir, *extra))
    _one_line_error(done, "iterate", files["empty"])
    assert not (run_dir / "iter_0").exists()  # nothing was built or trained


def test_scir_generate_refuses_an_empty_prompts_file_before_the_model(files, tmp_path):
    from megatron_scir.testing.hf import tiny_hf_llama

    tiny_hf_llama(tmp_path / "hf", tokenizer=True)
    out = tmp_path / "g.jsonl"
    done = _scir("generate", "--hf-dir", str(tmp_path / "hf"), "--prompts", str(files["empty"]),
                 "--out", str(out), "--no-progress")
    _one_line_error(done, "generate", files["empty"])
    assert not out.exists()


def test_scir_train_refuses_an_empty_pairs_file(files, tmp_path):
    done = _scir("train", "--config", "tiny", "--pairs", str(files["empty"]), "--no-progress",
                 f"data.tokenizer_path={files['tokenizer']}",
                 f"checkpoint.save={tmp_path / 'ckpt'}", "logging.tensorboard=false")
    _one_line_error(done, "train", files["empty"])
    assert not list((tmp_path / "ckpt").glob("step_*"))


def test_the_advice_to_lower_the_batch_size_in_seed_sft_is_accepted_by_the_rerun(files, tmp_path):
    # 8 seed examples (4 SFT + 4 judge) do not fill a global batch of 16
    run_dir = tmp_path / "run"
    stopped = _scir(*_iterate_args(files, run_dir, "train.global_batch_size=16"))
    assert stopped.returncode == 2, stopped.stderr[-3000:]
    assert "lower the batch size" in stopped.stderr
    done = _scir(*_iterate_args(files, run_dir, "train.global_batch_size=4"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "iter_0" / "sft" / "stage.json").is_file()
