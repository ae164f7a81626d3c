"""The trainer: Megatron's optimizer, DDP and schedules over the SCIR forward step.

Five optimizer steps under TP=2 + SP, PP=2 (1F1B and interleaved, 4 micro-batches per step),
DP=2 and DP=2 with the distributed optimizer end with the weights of the single-process run; a
NaN step is skipped and counted; too many in a row stop the run naming the step.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed
from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

pytestmark = pytest.mark.dist

WORDS = (
    "the sea is blue and salty because rivers carry salt from rocks while light scatters in "
    "air so the sky looks blue at noon and red at dusk"
).split()
STEPS, SEED, NUM_MICRO = 5, 7, 4  # NUM_MICRO: micro-batches per step in one process
TRAIN = [
    "model.num_layers=4",  # PP=2 × 2 virtual stages
    "data.max_prompt_length=32",
    "data.max_response_length=32",
    "data.judge_max_length=256",
    "data.max_truncated_fraction=1.0",  # 2 of the 16 pairs are cut to fit
    "train.micro_batch_size=1",  # 4 micro-batches per step: the interleaved schedule's steady state
    "train.global_batch_size=4",
    f"train.train_iters={STEPS}",
    "train.lr=1e-3",
    "train.lr_warmup_iters=1",
    "logging.progress=false",
    "logging.tensorboard=false",
]
LAYOUTS = {
    "tp2_sp": ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
    "pp2": ["parallel.pipeline_model_parallel_size=2"],
    "pp2_vpp2": [
        "parallel.pipeline_model_parallel_size=2",
        "parallel.virtual_pipeline_model_parallel_size=2",
    ],
    "dp2": [],
    "dp2_distributed_optimizer": ["parallel.use_distributed_optimizer=true"],
}


def write_pairs(path: Path, num_pairs: int = 16) -> Path:
    """Labelled pairs with stand-in reference log-probs (the implicit reward has opinions)."""
    rng = random.Random(0)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    with open(path, "w") as f:
        for i in range(num_pairs):
            record = {
                "pair_id": f"p{i}",
                "prompt_id": f"q{i}",
                "prompt": text(3, 8),
                "response_1": text(2, 10),
                "response_2": text(2, 10),
                "label": rng.choice([1, 2]),
                "ref_logps_1": -30 + 10 * rng.random(),
                "ref_logps_2": -30 + 10 * rng.random(),
            }
            f.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer")
    return train_tiny_sentencepiece(root), write_pairs(root / "pairs.jsonl")


def _train(cfg, runtime, chunks, pairs, out: Path, forward_step=None):
    from megatron_scir.data import ScirDataModule, build_tokenizer
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.trainer import train

    layout = MicroBatchLayout.for_training(cfg)
    data = ScirDataModule(
        cfg,
        build_tokenizer(cfg.data),
        layout=layout,
        dp_rank=runtime.dp_rank,
        dp_size=runtime.dp_size,
        train_path=pairs,
    )
    data.setup("fit")
    step = forward_step or make_forward_step(
        cfg, layout, data.verdict_token_ids, tp_group=runtime.tp_group
    )
    return train(runtime, cfg, chunks, data, step, save_dir=None, log_dir=out)


def _run_layouts(rank, world_size, sp_path, pairs, out, layouts):
    from megatron_scir.config import load_config
    from megatron_scir.parallel import state
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.testing.weights import build_with_master_weights, gather_master

    results = {}
    for name, overrides in layouts.items():
        cfg = load_config("tiny", [*TRAIN, *overrides, f"data.tokenizer_path={sp_path}"])
        chunks, _ = build_with_master_weights(cfg, seed=SEED)
        with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
            result = _train(cfg, runtime, chunks, pairs, Path(out) / name)
            results[name] = (result.state.step, result.metrics, gather_master(chunks, grads=False))
        state.destroy_model_parallel()
    return results


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    (result,) = run_distributed(
        _run_layouts, world_size=1, args=(*map(str, inputs), str(out), {"single": []})
    )
    return result["single"]


@pytest.fixture(scope="module")
def layouts(inputs, reference, tmp_path_factory):
    out = tmp_path_factory.mktemp("layouts")
    args = (*map(str, inputs), str(out), LAYOUTS)
    return run_distributed(_run_layouts, world_size=2, args=args, timeout=900)


def test_the_single_process_run_trains(reference, inputs):
    steps, metrics, weights = reference
    assert steps == STEPS and metrics["train/skipped_steps"] == 0
    # Adam at lr 1e-3 moved every weight: a parity check on unchanged weights proves nothing
    initial = _initial_weights(inputs)
    moved = {name: (weights[name] - initial[name]).abs().max().item() for name in initial}
    assert min(moved.values()) > 1e-4, moved


def _initial(rank, world_size, sp_path):
    from megatron_scir.config import load_config
    from megatron_scir.testing.weights import build_with_master_weights

    cfg = load_config("tiny", [*TRAIN, f"data.tokenizer_path={sp_path}"])
    _, master = build_with_master_weights(cfg, seed=SEED)
    return master


def _initial_weights(inputs):
    (master,) = run_distributed(_initial, world_size=1, args=(str(inputs[0]),))
    return master


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_five_steps_under_layout_end_with_the_single_process_weights(reference, layouts, layout):
    ref_steps, ref_metrics, ref_weights = reference
    for rank_results in layouts:
        steps, metrics, weights = rank_results[layout]
        assert steps == ref_steps
        assert metrics["loss/total"] == pytest.approx(ref_metrics["loss/total"], abs=1e-5)
        worst = max((weights[n] - ref_weights[n]).abs().max().item() for n in ref_weights)
        assert worst < 1e-5, f"{layout}: max |Δ weight| {worst:.2e}"


def _nan_run(rank, world_size, sp_path, pairs, out, nan_steps):
    from megatron_scir.config import load_config
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.trainer import TrainingDiverged

    cfg = load_config(
        "tiny", [*TRAIN, f"data.tokenizer_path={sp_path}", "train.max_skipped_steps=2"]
    )
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        calls = {"n": 0}
        layout = MicroBatchLayout.for_training(cfg)
        inner = make_forward_step(cfg, layout, [17, 40], tp_group=runtime.tp_group)

        def forward_step(data_iterator, model):
            output, loss_func = inner(data_iterator, model)
            calls["n"] += 1
            step = (calls["n"] + NUM_MICRO - 1) // NUM_MICRO

            def poisoned(out):
                loss, metrics = loss_func(out)
                return (loss * float("nan"), metrics) if step in nan_steps else (loss, metrics)

            return output, poisoned

        chunks = build_model_chunks(cfg)
        try:
            result = _train(cfg, runtime, chunks, pairs, Path(out), forward_step)
        except TrainingDiverged as err:
            return str(err)
        finite = all(torch.isfinite(p).all() for c in chunks for p in c.parameters())
        return result.state, finite


def test_a_nan_step_is_skipped_and_counted_and_the_run_continues(inputs, tmp_path):
    (result,) = run_distributed(
        _nan_run, world_size=1, args=(*map(str, inputs), str(tmp_path), {2})
    )
    state, finite = result
    assert (state.step, state.skipped_steps, state.consecutive_skips) == (STEPS, 1, 0)
    assert finite
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, STEPS + 1))
    assert [line["train/skipped_steps"] for line in lines] == [0, 1, 1, 1, 1]


def test_consecutive_nan_steps_stop_the_run_naming_the_step(inputs, tmp_path):
    (message,) = run_distributed(
        _nan_run, world_size=1, args=(*map(str, inputs), str(tmp_path), {2, 3})
    )
    assert "2 consecutive steps had a NaN/inf loss or gradient norm, the last at step 3" in message


def _bf16_grad_buffers(rank, world_size, sp_path, pairs, out):
    from megatron_scir.config import load_config
    from megatron_scir.parallel import state
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.testing.weights import build_with_master_weights, gather_master

    results = {}
    for fp32 in (True, False):
        overrides = ["model.params_dtype=bfloat16", f"parallel.grad_reduce_in_fp32={fp32}"]
        cfg = load_config("tiny", [*TRAIN, *overrides, f"data.tokenizer_path={sp_path}"])
        chunks, _ = build_with_master_weights(cfg, seed=SEED)
        with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
            result = _train(cfg, runtime, chunks, pairs, Path(out) / str(fp32))
            grad_dtypes = {str(p.main_grad.dtype) for c in chunks for p in c.parameters()}
            results[fp32] = (result.metrics, gather_master(chunks, grads=False), grad_dtypes)
        state.destroy_model_parallel()
    return results


def test_bf16_gradient_buffers_train_like_fp32_ones(inputs, tmp_path):
    # parallel.grad_reduce_in_fp32=false: 2 bytes/param less (scir plan counts it)
    (results,) = run_distributed(_bf16_grad_buffers, 1, args=(*map(str, inputs), str(tmp_path)))
    (m32, w32, g32), (m16, w16, g16) = results[True], results[False]
    assert g32 == {"torch.float32"} and g16 == {"torch.bfloat16"}
    assert m16["train/skipped_steps"] == 0
    # five Adam steps of a tiny bf16 model: the losses stay within bf16 noise of each other
    assert abs(m16["loss/total"] - m32["loss/total"]) < 0.1 * abs(m32["loss/total"])
    moved = max((w32[k].float() - w16[k].float()).abs().max().item() for k in w32)
    assert 0 < moved < 1e-2  # bf16 rounding in the accumulation, nothing more
