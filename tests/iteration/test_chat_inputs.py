"""Chat data through the commands (docs/data.md): an UltraFeedback-binarized Parquet file trains
``scir train`` in ``scir.mode=dpo`` and is scored by ``scir evaluate --pairs``; a multi-turn
``messages`` prompt pool in Parquet goes through one ``scir iterate`` iteration."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from megatron_scir.data import read_records
from megatron_scir.data.records import Message
from tests.data.test_chat_data import ULTRAFEEDBACK, write_all_forms
from tests.iteration.test_iterate import overrides

pq = pytest.importorskip("pyarrow.parquet")

CLI = [sys.executable, "-m", "megatron_scir.cli"]
TINY = [
    "data.max_prompt_length=32",
    "data.max_response_length=24",
    "data.judge_max_length=320",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_an_ultrafeedback_parquet_file_trains_dpo_and_is_scored_by_evaluate(task, tmp_path):
    # prompt, chosen and rejected all as message lists (UltraFeedback's prompt is a string:
    # tests/data/test_chat_data.py reads that form)
    rows = [{**row, "prompt": row["chosen"][:1]} for row in ULTRAFEEDBACK]
    parquet = write_all_forms(tmp_path / "uf", rows)["parquet"]
    args = [*TINY, f"data.tokenizer_path={task.tokenizer}"]
    save = tmp_path / "ckpt"
    train = _run(
        [*CLI, "train", "--config", "tiny", "--pairs", parquet, "--no-progress", *args,
         "scir.mode=dpo", "train.train_iters=2", "checkpoint.save_interval=1",
         f"checkpoint.save={save}"]
    )
    assert "6 preference rows" in train.stderr  # the shape is reported at load
    log = (save / "logs" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line) for line in log]
    assert [s["step"] for s in steps] == [1, 2]
    assert all(math.isfinite(s["loss/total"]) for s in steps)

    done = _run(
        [*CLI, "evaluate", "--config", "tiny", "--ckpt", str(save / "step_0000002"), "--ref-ckpt",
         str(save / "step_0000001"), "--pairs", parquet, "--out-dir", str(tmp_path / "work"),
         *args]
    )
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["num_pairs"] == len(ULTRAFEEDBACK)
    for key in ("implicit_accuracy", "judge_accuracy"):
        assert 0.0 <= report[key] <= 1.0, key


@pytest.fixture(scope="module")
def multi_turn_run(task, tmp_path_factory):
    """The task's prompts as the last user turn of a conversation with a system turn and an
    earlier exchange, in Parquet, through one iteration of scir iterate."""
    tmp_path = tmp_path_factory.mktemp("multi_turn")
    pool = [json.loads(line) for line in task.prompts.read_text().splitlines()][:16]
    rows = [
        {
            "id": row["id"],
            "messages": [
                {"role": "system", "content": "Answer with a number."},
                {"role": "user", "content": "What is 1 + 1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": row["prompt"]},
            ],
        }
        for row in pool
    ]
    files = write_all_forms(tmp_path / "pool", rows)
    run_dir = tmp_path / "run"
    args = _multi_turn_args(task, run_dir, files["parquet"])
    _run([*CLI, "iterate", "--config", "tiny", "--no-progress", *args])
    return pool, run_dir, args, files


def _multi_turn_args(task, run_dir, prompts) -> list[str]:
    return overrides(
        task, run_dir, "iteration.seed_sft=false", "iteration.num_iterations=1",
        "iteration.prompts_per_iteration=16", f"data.prompts={prompts}",
        "data.max_prompt_length=64", "data.judge_max_length=160",
    )


def test_a_multi_turn_messages_pool_runs_one_iteration(multi_turn_run):
    pool, run_dir, _, _ = multi_turn_run
    stream = run_dir / "iter_1" / "generate" / "generations.jsonl"
    generations, _ = read_records(stream, "generations")
    assert len(generations) == 16
    first = generations[0].prompt
    assert first[0] == Message("system", "Answer with a number.")
    assert first[-1] == Message("user", pool[0]["prompt"]) and len(first) == 4
    pairs, _ = read_records(run_dir / "iter_1" / "pairs" / "pairs.jsonl", "pairs")
    assert pairs and all(p.prompt[-1].role == "user" and len(p.prompt) == 4 for p in pairs)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert math.isfinite(metrics[-1]["loss_total"])


def test_the_same_pool_in_jsonl_samples_the_same_generations(task, multi_turn_run, tmp_path):
    _, parquet_run, _, files = multi_turn_run
    run_dir = tmp_path / "run"
    _run([*CLI, "iterate", "--config", "tiny", "--no-progress",
          *_multi_turn_args(task, run_dir, files["jsonl"])])
    name = "iter_1/generate/generations.jsonl"
    assert read_records(run_dir / name, "generations")[0] == read_records(
        parquet_run / name, "generations"
    )[0]


@pytest.mark.parametrize("chosen_by", ["judge", "agreed"])
def test_export_pairs_writes_a_preference_dataset_with_both_verdicts(
    multi_turn_run, tmp_path, chosen_by
):
    datasets = pytest.importorskip("datasets")
    _, run_dir, args, _ = multi_turn_run
    out = tmp_path / ("pairs.parquet" if chosen_by == "judge" else "pairs_dataset")
    done = _run(
        [*CLI, "export-pairs", "--config", "tiny", "--run-dir", str(run_dir), "--iteration", "1",
         "--out", str(out), "--chosen-by", chosen_by, "--out-dir", str(tmp_path / "work"), *args]
    )
    report = json.loads(done.stdout[done.stdout.index("{"):])
    built, _ = read_records(run_dir / "iter_1" / "pairs" / "pairs.jsonl", "pairs")
    assert report["num_pairs"] == len(built)
    assert report["exported"] + sum(report["left_out"].values()) == len(built)
    rows = (
        pq.read_table(out).to_pylist() if out.suffix else list(datasets.load_from_disk(str(out)))
    )
    assert len(rows) == report["exported"] > 0
    by_id = {p.pair_id: p for p in built}
    for row in rows:
        pair = by_id[row["pair_id"]]
        assert row["prompt"][0]["role"] == "system" and row["prompt"][-1]["role"] == "user"
        first = row["p_judge"] > 0.5
        assert 0.0 <= row["p_judge"] <= 1.0 and 0.0 <= row["p_implicit"] <= 1.0
        if chosen_by == "agreed":
            assert row["consistent"] and (row["p_implicit"] > 0.5) == first
        chosen = pair.response_1 if first else pair.response_2
        assert row["chosen"] == [{"role": "assistant", "content": chosen}]
    # the export reads back as labelled pairs (this project's preference shape)
    again, report_again = read_records(out if out.suffix else str(out), "pairs")
    assert len(again) == len(rows) and report_again.shapes == {"preference": len(rows)}


# ------------------------------------------------------- answer files for AlpacaEval and MT-Bench

ALPACA_SCHEMA = {"instruction": str, "output": str, "generator": str, "dataset": str}
FASTCHAT_ANSWER = {"question_id": int, "answer_id": str, "model_id": str, "choices": list,
                   "tstamp": float}


def test_alpaca_eval_and_mt_bench_answer_files(task, multi_turn_run, tmp_path):
    _, run_dir, args, _ = multi_turn_run
    ckpt = json.loads((run_dir / "iter_1" / "train" / "stage.json").read_text())
    ckpt = ckpt["outputs"]["checkpoint"]
    evaluate = [*CLI, "evaluate", "--config", "tiny", "--ckpt", ckpt, "--model-id", "tiny-scir",
                "--out-dir", str(tmp_path / "work"), "--no-progress", *args]

    # AlpacaEval 2: the eval set's rows in, model_outputs.json out (its loader: pd.read_json
    # of a list of records with instruction / output / generator)
    eval_set = [
        {"instruction": "What is 2 + 3?", "output": "5", "generator": "gpt4", "dataset": "koala"},
        {"instruction": "What is 4 + 4?", "output": "8", "generator": "gpt4", "dataset": "oasst"},
    ]
    questions = tmp_path / "alpaca_eval.json"
    questions.write_text(json.dumps(eval_set))
    out = tmp_path / "model_outputs.json"
    _run([*evaluate, "--prompts", str(questions), "--format", "alpaca_eval", "--out", str(out)])
    outputs = json.loads(out.read_text())
    assert isinstance(outputs, list) and len(outputs) == 2
    for row, asked in zip(outputs, eval_set, strict=True):
        assert {k: type(v) for k, v in row.items()} == ALPACA_SCHEMA
        assert row["instruction"] == asked["instruction"] and row["dataset"] == asked["dataset"]
        assert row["generator"] == "tiny-scir"

    # MT-Bench: FastChat's question.jsonl in (two turns and one), its answer JSONL out; the
    # second turn is answered in conversation, after the model's own first answer
    mt = [
        {"question_id": 81, "category": "math", "turns": ["What is 2 + 3?", "And 4 + 4?"]},
        {"question_id": 82, "category": "math", "turns": ["What is 1 + 6?"]},
    ]
    questions = tmp_path / "question.jsonl"
    questions.write_text("".join(json.dumps(q) + "\n" for q in mt))
    answers_dir = tmp_path / "model_answer"
    out = answers_dir / "tiny-scir.jsonl"
    _run([*evaluate, "--prompts", str(questions), "--format", "mt_bench", "--out", str(out)])
    # FastChat's load_model_answers: {model: {question_id: answer}} from <dir>/<model>.jsonl
    loaded = {
        path.stem: {line["question_id"]: line for line in map(json.loads, path.open())}
        for path in answers_dir.glob("*.jsonl")
    }
    answers = loaded["tiny-scir"]
    assert sorted(answers) == [81, 82]
    for question in mt:
        answer = answers[question["question_id"]]
        assert {k: type(v) for k, v in answer.items()} == FASTCHAT_ANSWER
        assert answer["model_id"] == "tiny-scir"
        (choice,) = answer["choices"]
        assert choice["index"] == 0 and len(choice["turns"]) == len(question["turns"])
        assert all(isinstance(t, str) for t in choice["turns"])
    second, _ = read_records(tmp_path / "work" / "mt_bench_turn2.jsonl", "generations")
    (turn2,) = second
    first_answer = answers[81]["choices"][0]["turns"][0]
    assert turn2.prompt[0] == Message("user", "What is 2 + 3?")
    assert turn2.prompt[1].role == "assistant" and turn2.prompt[1].content.strip() == first_answer
    assert turn2.prompt[2] == Message("user", "And 4 + 4?")


def test_evaluate_runs_lm_eval_on_the_checkpoints_export(multi_turn_run, tmp_path):
    pytest.importorskip("lm_eval")
    from tests.iteration.test_trackers import _local_lm_eval_task

    _, run_dir, args, _ = multi_turn_run
    ckpt = json.loads((run_dir / "iter_1" / "train" / "stage.json").read_text())
    tasks = _local_lm_eval_task(tmp_path / "tasks")
    done = _run(
        [*CLI, "evaluate", "--config", "tiny", "--ckpt", ckpt["outputs"]["checkpoint"],
         "--out-dir", str(tmp_path / "work"), "--no-progress", *args,
         "iteration.lm_eval_tasks=[scir_sums]", f"iteration.lm_eval_include_path={tasks}"]
    )
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert 0.0 <= report["lm_eval/scir_sums/acc"] <= 1.0
    assert (tmp_path / "work" / "hf" / "tokenizer.model").is_file()  # the export loads alone
