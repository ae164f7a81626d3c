"""One parallel runtime: generate, train (forward + backward) on the same chunks, generate again.

The iteration driver goes from sampling with M_t to training it and back without tearing the
world down. Here one TP=2 gloo world (``parallel_world`` entered once) samples greedily with a
tiny model, runs one SCIR forward/backward through Megatron's schedule and DDP on the very same
chunks (no optimizer step, so the weights do not change), and samples again: the second file
must equal the first, and the process groups must be the ones created at the start.
"""

from __future__ import annotations

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

OVERRIDES = [
    "parallel.tensor_model_parallel_size=2",
    "generation.temperature=0",
    "generation.num_responses=1",
    "generation.max_new_tokens=6",
    "generation.max_batch_size=4",
    "train.micro_batch_size=2",
]
PROMPTS = ["Tell me about the sea.", "Name three colours.", "What is two plus two?"]
SEQ = 64


def _train_step(runtime, cfg, model) -> float:
    """One SCIR forward/backward of a random micro-batch; returns the global gradient norm²."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.parallel.reductions import step_metrics
    from megatron_scir.testing.scir_batches import random_scir_batch
    from megatron_scir.training.forward_step import make_forward_step

    batch = random_scir_batch(cfg, seq_length=SEQ, generator=torch.Generator().manual_seed(3))
    losses = get_forward_backward_func()(
        forward_step_func=make_forward_step(
            cfg, MicroBatchLayout.for_training(cfg), [17, 40], tp_group=runtime.tp_group
        ),
        data_iterator=iter([batch]),
        model=model,
        num_microbatches=1,
        seq_length=SEQ,
        micro_batch_size=batch["tokens"].size(0),
        forward_only=False,
    )
    metrics = step_metrics(
        losses,
        dp_group=runtime.dp_group,
        pp_group=runtime.pp_group,
        is_last_stage=runtime.is_last_stage(),
    )
    assert torch.isfinite(torch.tensor(metrics["loss/total"]))
    norm = sum(float(p.main_grad.float().square().sum()) for p in model[0].parameters())
    torch.distributed.all_reduce(t := torch.tensor(norm), group=runtime.tp_group)
    return float(t)


def _job(rank, world_size, sp_path, out_dir):
    from megatron.core import parallel_state

    from megatron_scir.config import load_config
    from megatron_scir.data import PromptRecord, SentencePieceTokenizer, read_records
    from megatron_scir.generation import generate
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", [*OVERRIDES, f"data.tokenizer_path={sp_path}"])
    tokenizer = SentencePieceTokenizer(sp_path)
    prompts = [PromptRecord(id=str(i), prompt=p) for i, p in enumerate(PROMPTS)]
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        tp_group = parallel_state.get_tensor_model_parallel_group()
        assert runtime.tp_group is tp_group and runtime.tp_size == 2
        chunks = build_model_chunks(cfg)
        generate(runtime, chunks, tokenizer, prompts, f"{out_dir}/before.jsonl", cfg)
        model = wrap_with_ddp(chunks, cfg)
        assert model[0].training  # generation gave the chunks back in training mode
        grad_norm_sq = _train_step(runtime, cfg, model)
        generate(runtime, model, tokenizer, prompts, f"{out_dir}/after.jsonl", cfg)
        assert parallel_state.get_tensor_model_parallel_group() is tp_group  # not re-created
        assert model[0].training
    # the harness created torch.distributed: parallel_world tore down only Megatron's state
    assert torch.distributed.is_initialized()
    assert not parallel_state.model_parallel_is_initialized()
    files = None
    if rank == 0:
        files = [
            read_records(f"{out_dir}/{n}.jsonl", "generations")[0] for n in ("before", "after")
        ]
    return {"grad_norm_sq": grad_norm_sq, "files": files}


def test_one_runtime_generates_trains_and_generates_again_without_reinitialising(
    sp_model_path, tmp_path
):
    results = run_distributed(_job, world_size=2, args=(str(sp_model_path), str(tmp_path)))
    assert results[0]["grad_norm_sq"] > 0 and results[0]["grad_norm_sq"] == pytest.approx(
        results[1]["grad_norm_sq"]
    )
    before, after = results[0]["files"]
    assert [r.prompt_id for r in before] == ["0", "1", "2"]
    assert all(r.responses[0] for r in before)
    assert [r.responses for r in after] == [r.responses for r in before]


def _mismatch(rank, world_size):
    from megatron_scir.config import ConfigError, ParallelConfig
    from megatron_scir.parallel.runtime import parallel_world

    with parallel_world(ParallelConfig(tensor_model_parallel_size=2)):
        with pytest.raises(ConfigError, match="already initialised for TP=2 PP=1"):
            with parallel_world(ParallelConfig(pipeline_model_parallel_size=2)):
                pass
        with parallel_world(ParallelConfig(tensor_model_parallel_size=2)) as inner:
            assert inner.tp_size == 2  # a nested entry with the same layout reuses the world
        from megatron.core import parallel_state

        assert parallel_state.model_parallel_is_initialized()  # the inner exit kept it
    return True


def test_a_nested_runtime_reuses_the_world_and_refuses_another_layout():
    assert run_distributed(_mismatch, world_size=2) == [True, True]
