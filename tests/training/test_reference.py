"""The reference pass (SCIR_SPEC §7.3): exact ties at step 0, its file and hash, srlm labels.

The tie checks run the functions of ``scripts/gpu_check_ties.py`` (the GPU check is the same
code on CUDA): the tiny model with random weights and a tiny SentencePiece tokenizer trained
here write the reference file of a real pairs JSONL; one training forward/backward over every
training micro-batch of that file must then see policy log-probs and judge log-odds equal to the
stored ones bit for bit, ``scir/ties == 1`` and ``scir/consistency_rate == 0``: float32 and
bfloat16, padded and packed micro-batches, TP=1 in one process; TP=2 (float32 and bfloat16),
DP=2, interleaved PP=2 (one length per schedule call), TP=2+SP packed and 1F1B PP=2 packed
(each micro-batch its own length) in one 2-process job. The reference pass replays the training
micro-batches (pairs of varied length, grouped by length), so that a micro-batch's shape is the
same in both.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed

SCRIPT = Path(__file__).parents[2] / "scripts" / "gpu_check_ties.py"
SINGLE_PROCESS_TIES = {
    "fp32": [],
    "bf16": ["model.params_dtype=bfloat16"],
    "pointwise": ["judge.kind=pointwise"],
    "position_debias_none": ["judge.position_debias=none"],
    "packed_fp32": ["model.transformer_impl=sdpa"],  # one packed (THD) row per micro-batch
}
TWO_PROCESS_TIES = {
    "tp2_fp32": ["parallel.tensor_model_parallel_size=2"],
    "tp2_bf16": ["parallel.tensor_model_parallel_size=2", "model.params_dtype=bfloat16"],
    "dp2_fp32": [],  # two processes with TP=PP=1
    "pp2_interleaved_fp32": [
        "parallel.pipeline_model_parallel_size=2",
        "parallel.virtual_pipeline_model_parallel_size=2",
        "model.num_layers=4",
    ],
    "tp2_sp_packed_fp32": [
        "model.transformer_impl=sdpa",
        "parallel.tensor_model_parallel_size=2",
        "parallel.sequence_parallel=true",
    ],
    "pp2_packed_fp32": [  # 1F1B: every micro-batch's own length, shapes exchanged
        "model.transformer_impl=sdpa",
        "parallel.pipeline_model_parallel_size=2",
        "model.num_layers=4",
    ],
}


def _script():
    spec = importlib.util.spec_from_file_location("gpu_check_ties", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read_pairs(path: Path):
    from megatron_scir.data import read_records

    return read_records(path, "pairs")[0]


def _ties(check, tokenizer_path, pairs_path, workdir: Path, layouts: dict) -> dict:
    from megatron_scir.parallel.runtime import parallel_world

    results = {}
    for name, overrides in layouts.items():
        cfg = check.tie_config(tokenizer_path, overrides)
        with parallel_world(cfg.parallel, seed=check.SEED) as runtime:
            result = check.check_ties(runtime, cfg, pairs_path, workdir / f"{name}.jsonl")
            result["failures"] = check.tie_failures(result, is_last_stage=runtime.is_last_stage())
        results[name] = result
    return results


def _srlm(check, tokenizer_path, pairs_path, workdir: Path, judged: Path) -> dict:
    """srlm mode with a drop margin that drops about half the pairs of the fp32 judge."""
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.rewards import judge_preference

    pairs = _read_pairs(judged)
    log_p, _ = judge_preference(
        torch.tensor([p.ref_judge_logits_12 for p in pairs]),
        torch.tensor([p.ref_judge_logits_21 for p in pairs]),
    )
    margin = (log_p.exp() - 0.5).abs().median().item()
    cfg = check.tie_config(tokenizer_path, ["scir.mode=srlm", f"scir.srlm_drop_margin={margin}"])
    out = workdir / "srlm.jsonl"
    with parallel_world(cfg.parallel, seed=check.SEED) as runtime:
        result = check.check_ties(runtime, cfg, pairs_path, out)
    return {"margin": margin, "summary": result["summary"], "metrics": result["metrics"]}


def _skip_and_recompute(check, tokenizer_path, pairs_path: Path, workdir: Path) -> dict:
    """Run, rerun, tamper, delete and change inputs; record what each run did."""
    from megatron_scir.data import build_tokenizer
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.training.reference import run_reference_pass, sidecar_path

    cfg = check.tie_config(tokenizer_path, [])
    out, seen = workdir / "skip" / "pairs.ref.jsonl", {}
    own_pairs = workdir / "skip" / "pairs.jsonl"
    own_pairs.parent.mkdir()
    own_pairs.write_bytes(pairs_path.read_bytes())
    with parallel_world(cfg.parallel, seed=check.SEED) as runtime:
        torch.manual_seed(check.SEED)
        chunks, calls = build_model_chunks(cfg), []
        chunks[0].register_forward_pre_hook(lambda *_: calls.append(1))
        tokenizer = build_tokenizer(cfg.data)

        def run(name: str, run_cfg=cfg, inputs_id: str = "m0") -> None:
            calls.clear()
            summary = run_reference_pass(
                runtime, chunks, run_cfg, tokenizer, own_pairs, out, inputs_id=inputs_id,
                layout=MicroBatchLayout.for_training(run_cfg),
                reference_layout=MicroBatchLayout.for_reference(run_cfg),
            )
            seen[name] = {
                "summary": summary,
                "forward_calls": len(calls),
                "bytes": out.read_bytes(),
                "mtime_ns": out.stat().st_mtime_ns,
                "sidecar": json.loads(sidecar_path(out).read_text()),
            }

        run("first")
        run("rerun")
        out.write_bytes(out.read_bytes().replace(b'"ref_logps_1": -', b'"ref_logps_1": -1', 1))
        run("tampered")
        out.unlink()
        sidecar_path(out).unlink()
        run("deleted")
        run("other_model", inputs_id="m1")
        # 8 of the 13 pairs have a response over 16 tokens: cut, so the reference changes
        budget = ["data.max_response_length=16", "data.max_truncated_fraction=1.0"]
        run("other_budget", check.tie_config(tokenizer_path, budget))
        with open(own_pairs, "ab") as fh:
            fh.write(b'{"pair_id": "new", "prompt_id": "new", "prompt": "why", ')
            fh.write(b'"response_1": "the sky", "response_2": "the sea"}\n')
        run("more_pairs")
    return seen


def _single_process(rank, world_size, tokenizer_path, pairs_path, workdir):
    check, workdir = _script(), Path(workdir)
    results = _ties(check, tokenizer_path, pairs_path, workdir, SINGLE_PROCESS_TIES)
    results["srlm"] = _srlm(check, tokenizer_path, pairs_path, workdir, workdir / "fp32.jsonl")
    results["skip"] = _skip_and_recompute(check, tokenizer_path, Path(pairs_path), workdir)
    return results


def _two_processes(rank, world_size, tokenizer_path, pairs_path, workdir):
    check = _script()
    return _ties(check, tokenizer_path, pairs_path, Path(workdir), TWO_PROCESS_TIES)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    return (*_script().write_inputs(workdir), workdir)


@pytest.fixture(scope="module")
def single_process(inputs):
    (results,) = run_distributed(_single_process, world_size=1, args=inputs, timeout=600)
    return results


@pytest.fixture(scope="module")
def two_processes(inputs):
    tokenizer_path, pairs_path, workdir = inputs
    (workdir / "dist").mkdir()
    args = (tokenizer_path, pairs_path, workdir / "dist")
    return run_distributed(_two_processes, world_size=2, args=args, timeout=600)


@pytest.mark.parametrize("layout", list(SINGLE_PROCESS_TIES))
def test_every_pair_is_an_exact_tie_at_the_first_training_step(single_process, layout):
    result = single_process[layout]
    assert result["failures"] == []
    assert result["pairs_checked"] == 12  # 13 pairs: 3 global batches of 4
    assert result["metrics"]["scir/ties"] == 1.0
    assert result["metrics"]["scir/consistency_rate"] == 0.0
    assert result["policy_mismatches"] == result["judge_mismatches"] == 0


@pytest.mark.dist
@pytest.mark.parametrize("layout", list(TWO_PROCESS_TIES))
def test_every_pair_is_an_exact_tie_under_tp_dp_and_interleaved_pp(two_processes, layout):
    checked = 0
    for rank_results in two_processes:
        result = rank_results[layout]
        assert result["failures"] == []
        assert result["metrics"]["scir/ties"] == 1.0
        assert result["metrics"]["scir/consistency_rate"] == 0.0
        checked += result["pairs_checked"]
    # every last-stage rank checks its DP shard: TP=2 both ranks all 12, DP=2 6 each, PP=2 one
    assert checked == (24 if layout.startswith("tp2") else 12)


def test_the_file_holds_reference_logps_and_judge_log_odds_of_every_pair(inputs, single_process):
    _, pairs_path, workdir = inputs
    source, written = _read_pairs(pairs_path), _read_pairs(workdir / "fp32.jsonl")
    assert [p.pair_id for p in written] == [p.pair_id for p in source]  # file order, all pairs
    for pair in written:
        assert pair.ref_logps_1 < 0 and pair.ref_logps_2 < 0
        assert pair.ref_judge_logits_12 is not None and pair.ref_judge_logits_21 is not None
    one_order = _read_pairs(workdir / "position_debias_none.jsonl")
    pointwise = _read_pairs(workdir / "pointwise.jsonl")
    assert all(p.ref_judge_logits_21 is None for p in one_order + pointwise)
    assert all(p.ref_judge_logits_12 is not None for p in one_order + pointwise)


def test_the_summary_describes_the_judge_at_the_start_of_the_iteration(single_process):
    summary = single_process["fp32"]["summary"]
    assert summary.num_pairs == 13 and summary.judge_read and not summary.skipped
    p = summary.p_judge
    assert p["min"] <= p["p10"] <= p["p50"] <= p["p90"] <= p["max"]
    assert 0 < p["mean"] < 1 and p["std"] > 0 and 0 <= p["first_preferred"] <= 1
    assert 0 <= summary.position_consistency <= 1 and 0 < summary.verdict_mass < 1
    assert summary.num_srlm_labelled is None
    assert single_process["pointwise"]["summary"].position_consistency is None
    metrics = summary.metrics()
    assert metrics["reference/num_pairs"] == 13 and "reference/p_judge_p50" in metrics


def test_srlm_mode_writes_the_m_t_judges_labels_and_leaves_dropped_pairs_unlabelled(
    inputs, single_process
):
    from megatron_scir.rewards import srlm_labels

    _, _, workdir = inputs
    srlm, judged = single_process["srlm"], _read_pairs(workdir / "fp32.jsonl")
    written = _read_pairs(workdir / "srlm.jsonl")
    # the same weights and layout as the scir pass: the same judge bits
    assert [(p.ref_judge_logits_12, p.ref_judge_logits_21) for p in written] == [
        (p.ref_judge_logits_12, p.ref_judge_logits_21) for p in judged
    ]
    expected = srlm_labels(
        torch.tensor([p.ref_judge_logits_12 for p in written]),
        torch.tensor([p.ref_judge_logits_21 for p in written]),
        drop_margin=srlm["margin"],
    ).tolist()
    assert [p.label for p in written] == [{1.0: 1, 0.0: 2, -1.0: None}[x] for x in expected]
    summary = srlm["summary"]
    assert summary.num_srlm_dropped == expected.count(-1.0) > 0
    assert summary.num_srlm_labelled == 13 - summary.num_srlm_dropped > 0
    assert "loss/total" in srlm["metrics"]  # the labelled file trains in srlm mode


def test_a_valid_reference_file_is_skipped_without_running_the_model(single_process):
    seen = single_process["skip"]
    first, rerun = seen["first"], seen["rerun"]
    assert first["forward_calls"] > 0 and not first["summary"].skipped
    assert rerun["forward_calls"] == 0 and rerun["summary"].skipped
    assert rerun["bytes"] == first["bytes"] and rerun["mtime_ns"] == first["mtime_ns"]
    assert rerun["summary"] == dataclasses.replace(first["summary"], skipped=True)
    sidecar = first["sidecar"]
    assert sidecar["format"] == "megatron-scir/reference-pass"
    assert sidecar["inputs"]["model_id"] == "m0" and len(sidecar["inputs_sha256"]) == 64


def test_the_same_inputs_reproduce_the_file_byte_for_byte(single_process):
    seen = single_process["skip"]
    for name in ("tampered", "deleted"):  # a modified or missing file is recomputed
        assert seen[name]["forward_calls"] > 0 and not seen[name]["summary"].skipped
        assert seen[name]["bytes"] == seen["first"]["bytes"]
        assert seen[name]["sidecar"] == seen["first"]["sidecar"]


def test_a_changed_model_config_or_pairs_file_recomputes(single_process):
    seen = single_process["skip"]
    for name in ("other_model", "other_budget", "more_pairs"):
        assert seen[name]["forward_calls"] > 0 and not seen[name]["summary"].skipped, name
        assert seen[name]["sidecar"]["inputs_sha256"] != seen["first"]["sidecar"]["inputs_sha256"]
    assert seen["other_model"]["bytes"] == seen["first"]["bytes"]  # same weights, new identity
    assert seen["other_budget"]["bytes"] != seen["first"]["bytes"]
    assert seen["more_pairs"]["summary"].num_pairs == 14


def test_the_reference_loader_serves_the_training_layout_with_fillers(inputs):
    from megatron_scir.data import ScirDataModule, build_tokenizer
    from megatron_scir.data.layout import MicroBatchLayout

    tokenizer_path, pairs_path, _ = inputs
    check = _script()
    for mode, judge_rows in (("scir", 2), ("srlm", 2), ("dpo", 0)):
        cfg = check.tie_config(tokenizer_path, [f"scir.mode={mode}"])
        layout, reference = MicroBatchLayout.for_training(cfg), MicroBatchLayout.for_reference(cfg)
        dm = ScirDataModule(
            cfg, build_tokenizer(cfg.data), layout=layout, dp_rank=0, dp_size=1,
            train_path=pairs_path,
        )
        dm.setup("fit")
        assert reference.judge_rows_per_pair == judge_rows
        if mode != "srlm":  # srlm reads the judge in the reference pass only
            assert reference == layout
        loaded = list(dm.reference_dataloader(layout=reference, micro_batches_multiple_of=4))
        assert len(loaded) == 8  # 13 pairs → 7 micro-batches of 2 → a multiple of 4
        rows, budget = reference.num_rows, reference.seq_length
        assert all(b["tokens"].shape[0] == rows and b["tokens"].shape[1] <= budget for b in loaded)
        indices = [i for batch in loaded for i in batch["pair_indices"].tolist()]
        # the first epoch's micro-batches (the sampler's order), then the pair left out of it
        assert sorted(i for i in indices if i >= 0) == list(range(13)) and indices.count(-1) == 3


def test_judge_log_odds_fields_are_validated(tmp_path):
    from megatron_scir.data import RecordError, read_records, write_records

    base = {"pair_id": "a", "prompt_id": "p", "prompt": "x", "response_1": "1", "response_2": "2"}
    refs = {"ref_logps_1": -1.0, "ref_logps_2": -2.0}
    path = tmp_path / "pairs.jsonl"
    write_records(path, [base | refs | {"ref_judge_logits_12": 0.5, "ref_judge_logits_21": -1}])
    (pair,), _ = read_records(path, "pairs")
    assert (pair.ref_judge_logits_12, pair.ref_judge_logits_21) == (0.5, -1.0)
    bad = {
        "needs 'ref_judge_logits_12'": base | refs | {"ref_judge_logits_21": 1.0},
        "comes with 'ref_logps_1'": base | {"ref_judge_logits_12": 1.0},
        "must be a number": base | refs | {"ref_judge_logits_12": "1"},
    }
    for message, row in bad.items():
        path.write_text(json.dumps(row) + "\n")
        with pytest.raises(RecordError, match=message):
            read_records(path, "pairs")


def test_checkpoint_identity_changes_when_the_checkpoint_is_rewritten(tmp_path):
    import os

    from megatron_scir.checkpoint import checkpoint_identity

    ckpt = tmp_path / "iter_0000001"
    ckpt.mkdir()
    (ckpt / "metadata.json").write_text("{}")
    (ckpt / "scir_checkpoint.json").write_text('{"step": 1}')
    first = checkpoint_identity(ckpt)
    assert first == checkpoint_identity(ckpt) and str(ckpt.resolve()) in first
    os.utime(ckpt / "scir_checkpoint.json", ns=(1, 1))  # the same content, rewritten
    assert checkpoint_identity(ckpt) != first
