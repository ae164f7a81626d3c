"""What each training stage is for, measured on held-out data with the tiny model.

The seed SFT stage lowers the held-out loss; DPO on gold-labelled pairs raises the held-out
accuracy of the implicit reward (from 0: at the start πθ = πref and every pair is a tie); a bf16
run (fp32 master weights) tracks the fp32 run's loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from megatron_scir.testing.distributed import run_distributed
from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

pytestmark = pytest.mark.dist

FRUITS = ["apple", "pear", "plum", "lemon", "melon", "grape", "peach", "berry", "olive", "fig"]
BASE = [
    "data.max_prompt_length=32",
    "data.max_response_length=32",
    "data.judge_max_length=256",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
    "train.lr=3e-3",
    "train.lr_decay_style=constant",
    "train.clip_grad=1.0",
    "logging.progress=false",
    "logging.tensorboard=false",
]


def _examples(rng: random.Random, n: int) -> list[tuple[str, str, str]]:
    """(prompt, correct answer, wrong answer): repeat the fruit twice."""
    rows = []
    for _ in range(n):
        fruit, other = rng.sample(FRUITS, 2)
        rows.append((f"Say {fruit} twice.", f"{fruit} {fruit}", f"{other} and {other}"))
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("modes")
    rng = random.Random(1)
    train, held_out = _examples(rng, 32), _examples(rng, 8)
    sft = [{"prompt": p, "response": good} for p, good, _ in train]
    pairs = []
    for i, (p, good, bad) in enumerate(train + held_out):
        first = rng.random() < 0.5
        one, two = (good, bad) if first else (bad, good)
        row = {"pair_id": f"p{i}", "prompt_id": f"q{i}", "prompt": p}
        pairs.append({**row, "response_1": one, "response_2": two, "label": 1 if first else 2})
    return {
        "sp": str(train_tiny_sentencepiece(root)),
        "sft": str(_write(root / "sft.jsonl", sft)),
        "sft_held_out": str(
            _write(root / "sft_held.jsonl", [{"prompt": p, "response": g} for p, g, _ in held_out])
        ),
        "pairs": str(_write(root / "pairs.jsonl", pairs[: len(train)])),
        "pairs_held_out": str(_write(root / "pairs_held.jsonl", pairs[len(train) :])),
        "root": str(root),
    }


def _sft_batches(cfg, runtime, path):
    from megatron_scir.data import SftDataModule, build_tokenizer
    from megatron_scir.data.layout import MicroBatchLayout

    data = SftDataModule(
        cfg,
        build_tokenizer(cfg.data),
        layout=MicroBatchLayout.from_config(cfg, with_judge=True),
        dp_rank=runtime.dp_rank,
        dp_size=runtime.dp_size,
        sft_path=path,
    )
    data.setup("fit")
    return data, list(data.train_dataloader())


def _sft(rank, world_size, task, dtype):
    from megatron_scir.config import load_config
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.training.sft_step import make_sft_forward_step
    from megatron_scir.training.trainer import evaluate, train

    overrides = [f"data.tokenizer_path={task['sp']}", "train.sft_epochs=4"]
    cfg = load_config("tiny", [*BASE, *overrides, f"model.params_dtype={dtype}"])
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        step = make_sft_forward_step(cfg, tp_group=runtime.tp_group)
        data, _ = _sft_batches(cfg, runtime, task["sft"])
        _, held_out = _sft_batches(cfg, runtime, task["sft_held_out"])
        chunks = build_model_chunks(cfg)
        before = evaluate(runtime, chunks, held_out, step)["loss/sft"]
        out = Path(task["root"]) / f"sft_{dtype}"
        result = train(runtime, cfg, chunks, data, step, save_dir=None, log_dir=out)
        after = evaluate(runtime, chunks, held_out, step)["loss/sft"]
    losses = [json.loads(line)["loss/sft"] for line in (out / "metrics.jsonl").open()]
    return before, after, result.state.step, losses


def test_seed_sft_lowers_the_held_out_loss(task):
    (result,) = run_distributed(_sft, world_size=1, args=(task, "float32"))
    before, after, steps, _ = result
    assert steps == 4 * 32 // 4
    assert after < 0.7 * before, (before, after)


def test_a_bf16_run_with_fp32_master_weights_tracks_the_fp32_loss(task):
    (fp32,) = run_distributed(_sft, world_size=1, args=(task, "float32"))
    (bf16,) = run_distributed(_sft, world_size=1, args=(task, "bfloat16"))
    fp32_losses, bf16_losses = fp32[3], bf16[3]
    assert len(fp32_losses) == len(bf16_losses) == 32
    for a, b in zip(fp32_losses, bf16_losses, strict=True):
        assert abs(a - b) <= 0.05 * a + 0.05, (a, b)
    assert bf16[1] < 0.7 * bf16[0]  # and it learns


def _dpo(rank, world_size, task):
    from megatron_scir.config import load_config
    from megatron_scir.data import ScirDataModule, build_tokenizer
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.recipe import ModelSource
    from megatron_scir.recipe.stages import reference_stage
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.trainer import evaluate, train

    overrides = [f"data.tokenizer_path={task['sp']}", "scir.mode=dpo", "train.epochs=3"]
    cfg = load_config("tiny", [*BASE, *overrides, "train.lr=1e-3", "scir.beta=0.5"])
    root = Path(task["root"])
    tokenizer = build_tokenizer(cfg.data)
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        chunks = build_model_chunks(cfg)
        refs = {}
        for name in ("pairs", "pairs_held_out"):
            refs[name] = root / f"{name}.ref.jsonl"
            reference_stage(
                runtime, cfg, tokenizer, model=ModelSource("random-init", seed=cfg.train.seed),
                pairs=task[name], out=refs[name], chunks=chunks,
            )
        layout = MicroBatchLayout.for_training(cfg)
        ranks = dict(layout=layout, dp_rank=runtime.dp_rank, dp_size=runtime.dp_size)
        data = ScirDataModule(cfg, tokenizer, train_path=refs["pairs"], **ranks)
        data.setup("fit")
        held = ScirDataModule(cfg, tokenizer, train_path=refs["pairs_held_out"], **ranks)
        held.setup("fit")
        held_out = list(held.train_dataloader())
        step = make_forward_step(cfg, layout, None, tp_group=runtime.tp_group)
        before = evaluate(runtime, chunks, held_out, step)["reward/accuracy"]
        train(runtime, cfg, chunks, data, step, save_dir=None, log_dir=root / "dpo")
        after = evaluate(runtime, chunks, held_out, step)["reward/accuracy"]
    return before, after


def test_dpo_on_gold_labelled_pairs_raises_the_held_out_implicit_reward_accuracy(task):
    (result,) = run_distributed(_dpo, world_size=1, args=(task,))
    before, after = result
    assert before == 0.0  # πθ = πref: every margin is exactly 0
    assert after >= 0.75, after
