"""One SCIR step under TP=2, TP=2+SP, PP=2 (1F1B and interleaved) and DP=2 equals one process.

The reference is one gloo process (TP=PP=DP=1) running two micro-batches of k=2 pairs through
Megatron's schedule with the SCIR forward step. It also fixes the reference log-probs once:
ref = policy log-probs at the initial weights + offsets that make Δ_I = ±1 exactly, agreeing
with the judge on one pair of each micro-batch and disagreeing on the other, so no prediction
sits near a tie and the consistent-pair selection is the same in every layout. Each layout then
runs in two processes from the same master weights (``megatron_scir.testing.weights``):
loss/metrics (reduced over micro-batches and DP) and the gradients of the full model (TP shards
gathered, PP stages collected) must equal the reference within 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

SEQ, SEED, NUM_MICRO = 64, 21, 2
BASE = ["model.vocab_size=250", "model.num_layers=4", "train.micro_batch_size=2"]
VERDICT_IDS = [17, 200]  # one on each TP=2 vocabulary shard
LAYOUTS = {
    "tp2": ["parallel.tensor_model_parallel_size=2"],
    "tp2_sp": ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
    "pp2_1f1b": ["parallel.pipeline_model_parallel_size=2"],
    "pp2_interleaved_vpp2": [
        "parallel.pipeline_model_parallel_size=2",
        "parallel.virtual_pipeline_model_parallel_size=2",
    ],
    "dp2": [],  # two processes with TP=PP=1 leave DP=2
}


def _run_step(cfg, chunks, batches) -> dict[str, float]:
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from megatron_scir.parallel import state
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.training.forward_step import make_forward_step, step_metrics

    model = wrap_with_ddp(chunks, cfg)
    losses = get_forward_backward_func()(
        forward_step_func=make_forward_step(cfg, VERDICT_IDS, tp_group=state.tp_group()),
        # the interleaved schedule reads one iterator per model chunk
        data_iterator=[iter(batches) for _ in model] if len(model) > 1 else iter(batches),
        model=model,
        num_microbatches=len(batches),
        seq_length=SEQ,
        micro_batch_size=batches[0]["tokens"].size(0),
        forward_only=False,
    )
    return step_metrics(
        losses,
        dp_group=state.dp_group(),
        pp_group=state.pp_group(),
        is_last_stage=state.is_last_stage(),
    )


@torch.no_grad()
def _set_reference_logps(cfg, model, batch) -> None:
    """ref_logps = policy logps + offsets giving Δ_I = +1 / −1 against the judge's choice."""
    from megatron_scir.models import forward_last_stage
    from megatron_scir.rewards import judge_preference, pairwise_log_odds
    from megatron_scir.training.forward_step import judge_candidate_logps, policy_sequence_logps

    k, vocab = cfg.train.micro_batch_size, cfg.model.vocab_size

    def head_fn(head):
        rows = torch.arange(2 * k, batch["tokens"].size(0))
        policy = policy_sequence_logps(
            head,
            slice(0, 2 * k),
            batch["labels"][: 2 * k],
            batch["loss_mask"][: 2 * k],
            tp_group=None,
            vocab_size=vocab,
        )
        verdict = judge_candidate_logps(
            head,
            rows,
            batch["verdict_positions"],
            torch.tensor(VERDICT_IDS),
            tp_group=None,
            vocab_size=vocab,
        )
        return policy, pairwise_log_odds(verdict)

    policy, odds = forward_last_stage(model, batch["tokens"], batch["position_ids"], head_fn)
    log_p_judge, log_q_judge = judge_preference(odds[:k], odds[k:])
    centered_judge = 0.5 * (log_p_judge.exp() - log_q_judge.exp())
    assert centered_judge.abs().min() > 1e-3, "pick another SEED: a judge prediction is near ½"
    judge_sign = torch.sign(centered_judge)
    target_delta = judge_sign * torch.tensor([1.0, -1.0]).repeat(k)[:k]  # agree, disagree
    # Δ_I = β((π1 − ref1) − (π2 − ref2)) with ref1 = π1 and ref2 = π2 + Δ/β.
    batch["ref_logps"] = torch.cat([policy[:k], policy[k:] + target_delta / cfg.scir.beta])


def _reference(rank, world_size):
    from megatron_scir.config import load_config
    from megatron_scir.testing.scir_batches import random_scir_batch
    from megatron_scir.testing.weights import build_with_master_weights, gather_master

    cfg = load_config("tiny", BASE)
    chunks, _ = build_with_master_weights(cfg, seed=SEED)
    generator = torch.Generator().manual_seed(SEED)
    batches = [
        random_scir_batch(cfg, seq_length=SEQ, generator=generator) for _ in range(NUM_MICRO)
    ]
    for batch in batches:
        _set_reference_logps(cfg, chunks[0], batch)
    metrics = _run_step(cfg, chunks, batches)
    return batches, metrics, gather_master(chunks, grads=True)


def _layouts(rank, world_size, batches):
    from megatron_scir.config import load_config
    from megatron_scir.parallel import state
    from megatron_scir.testing.weights import build_with_master_weights, gather_master

    results = {}
    for name, overrides in LAYOUTS.items():
        cfg = load_config("tiny", BASE + overrides)
        chunks, _ = build_with_master_weights(cfg, seed=SEED)
        # Data parallelism splits the micro-batches; TP and PP ranks all see every one.
        mine = batches[state.dp_rank() :: state.dp_size()]
        metrics = _run_step(cfg, chunks, mine)
        results[name] = (metrics, gather_master(chunks, grads=True))
        state.destroy_model_parallel()
    return results


@pytest.fixture(scope="module")
def reference():
    (result,) = run_distributed(_reference, world_size=1, timeout=300)
    return result


@pytest.fixture(scope="module")
def layouts(reference):
    batches = reference[0]
    return run_distributed(_layouts, world_size=2, args=(batches,), timeout=600)


def test_reference_step_mixes_consistent_and_inconsistent_pairs(reference):
    _, metrics, grads = reference
    assert metrics["scir/consistency_rate"] == 0.5 and metrics["scir/ties"] == 0.0
    assert metrics["loss/pref"] > 0 and metrics["loss/cons"] > 0
    for name, grad in grads.items():
        assert grad.abs().max() > 0, f"{name} gets no gradient in the reference"


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_scir_step_under_layout_equals_the_single_process_loss_metrics_and_gradients(
    reference, layouts, layout
):
    _, ref_metrics, ref_grads = reference
    for rank_results in layouts:
        metrics, grads = rank_results[layout]
        assert metrics.keys() == ref_metrics.keys()
        for key, value in ref_metrics.items():
            assert metrics[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
        assert grads.keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
