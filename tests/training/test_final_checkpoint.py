"""``final_optimizer=False`` (the self-rewarding loop's training stages): the last checkpoint
holds the weights without the optimizer state, a mid-run checkpoint keeps it; a finished run
resumes from the weights-only checkpoint without training, a run with steps left is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed
from tests.training.test_trainer import SEED, TRAIN, inputs  # noqa: F401  (fixture)

pytestmark = pytest.mark.dist


def _run(rank, world_size, sp_path, pairs, out, steps, final_optimizer):
    from megatron_scir.checkpoint import CheckpointError
    from megatron_scir.config import load_config
    from megatron_scir.data import ScirDataModule, build_tokenizer
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.parallel import state
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.testing.weights import build_with_master_weights, gather_master
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.trainer import train

    overrides = [o for o in TRAIN if not o.startswith("train.train_iters")]
    cfg = load_config(
        "tiny",
        [
            *overrides,
            f"train.train_iters={steps}",
            "checkpoint.save_interval=2",
            f"data.tokenizer_path={sp_path}",
        ],
    )
    chunks, _ = build_with_master_weights(cfg, seed=SEED)
    try:
        with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
            layout = MicroBatchLayout.for_training(cfg)
            data = ScirDataModule(
                cfg, build_tokenizer(cfg.data), layout=layout, dp_rank=0, dp_size=1,
                train_path=pairs,
            )
            data.setup("fit")
            step = make_forward_step(cfg, layout, data.verdict_token_ids, tp_group=runtime.tp_group)
            try:
                result = train(
                    runtime, cfg, chunks, data, step, save_dir=out, log_dir=Path(out) / "logs",
                    resume=True, final_optimizer=final_optimizer,
                )
            except CheckpointError as error:
                return str(error)
            weights = gather_master(chunks, grads=False)
            return result.state.step, result.checkpoint, weights
    finally:
        state.destroy_model_parallel()


def _contents(path: Path) -> tuple[str, ...]:
    from megatron_scir.checkpoint import read_metadata

    return read_metadata(path).contents


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_the_last_checkpoint_drops_the_optimizer_and_a_finished_run_resumes_from_it(
    inputs, tmp_path  # noqa: F811
):
    sp_path, pairs = map(str, inputs)
    save = tmp_path / "ckpt"
    args = (sp_path, pairs, str(save))
    ((steps, last, weights),) = run_distributed(_run, world_size=1, args=(*args, 4, False))
    assert steps == 4 and last == save / "step_0000004"
    assert "optimizer" in _contents(save / "step_0000002")  # mid-run: resumable exactly
    assert "optimizer" not in _contents(last)
    assert _size(last) < 0.5 * _size(save / "step_0000002")  # Adam: two moments + fp32 master

    # rerun: the weights-only checkpoint ends the run, nothing is trained again
    ((steps_again, _, weights_again),) = run_distributed(_run, world_size=1, args=(*args, 4, False))
    assert steps_again == 4
    for name, tensor in weights.items():
        torch.testing.assert_close(weights_again[name], tensor, rtol=0, atol=0)

    # more steps than it was trained for: refused, naming the checkpoint and what to do
    (error,) = run_distributed(_run, world_size=1, args=(*args, 6, False))
    assert isinstance(error, str), error
    assert "step_0000004" in error and "holds no optimizer state" in error
    assert "checkpoint.load" in error


def test_by_default_the_last_checkpoint_keeps_the_optimizer(inputs, tmp_path):  # noqa: F811
    sp_path, pairs = map(str, inputs)
    save = tmp_path / "ckpt"
    ((steps, last, _),) = run_distributed(
        _run, world_size=1, args=(sp_path, pairs, str(save), 2, True)
    )
    assert steps == 2 and "optimizer" in _contents(last)
