"""One SCIR step under every parallel layout equals the same step in one process.

Sources of micro-batches (each with its own single-process reference):

- ``pairwise``: random batches, pairwise judge with both orders (``mean_prob`` debiasing);
- ``pairwise_one_order``: random batches, ``judge.position_debias=none`` (one judge row a pair);
- ``pointwise``: random batches, pointwise judge (a score row per response, six score tokens);
- ``datamodule``: real micro-batches from :class:`~megatron_scir.data.ScirDataModule` (a tiny
  SentencePiece tokenizer trained here, a pairs JSONL of short and long pairs, the default
  pairwise judge template): rows padded to each micro-batch's own longest, so the two
  micro-batches of the global batch have different lengths;
- ``packed``: the same pairs with the ``sdpa`` spec, whose micro-batches are packed (one THD row
  of all the sequences, each attending to itself; totals differ between micro-batches);
- ``previous``: random batches with ``scir.implicit_reference=previous``: the implicit reward
  reads ``prev_logps`` (log π_{t−1}) while the DPO term's reference equals the policy (the first
  step of an iteration);
- ``selection_all``: random batches with ``scir.selection=all`` (DPO on every judged pair).

The reference is one gloo process (TP=PP=DP=1) running two micro-batches of k=2 pairs through
Megatron's schedule with the SCIR forward step. It also fixes the reference log-probs once:
ref = policy log-probs at the initial weights + offsets that make Δ_I = ±1 (agreeing with the
judge) on one pair of each micro-batch and ∓2 (disagreeing) on the other, so no prediction
sits near a tie and the consistent-pair selection is the same in every layout (for
``previous`` those offsets go into ``prev_logps`` and ``ref_logps`` = the policy's). Each layout
then runs from the same master weights (``megatron_scir.testing.weights``): loss/metrics (reduced
over micro-batches and DP) and the gradients of the full model (TP shards gathered, PP stages
collected) must equal the reference within 1e-5. The layouts run in two spawned jobs, two and
four processes, under the harness's NCCL contiguity rule (strided tensors refused by every
collective).
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import pytest
import torch

from megatron_scir.testing.distributed import run_distributed

pytestmark = pytest.mark.dist

SEQ, SEED, NUM_MICRO = 64, 21, 2
# The pairs' text: position debiasing leaves the tiny model's judge within ~1e-4 of ½ on real
# text, and with this seed every pair stays more than 1e-4 away (see _set_reference_logps).
DATA_SEED = 5
BASE = ["model.num_layers=4", "train.micro_batch_size=2"]
RANDOM_BASE = [*BASE, "model.vocab_size=250"]  # 250 → 256: padded vocabulary
PAIRWISE_IDS = [17, 200]  # one verdict id on each TP=2 vocabulary shard
SCORE_IDS = [10, 130, 20, 140, 30, 249]
# source → (config overrides, candidate ids); the datamodule's ids come from its tokenizer
DATAMODULE = [
    *BASE,
    "data.max_prompt_length=32",
    "data.max_response_length=32",
    "data.judge_max_length=256",  # the default pairwise template plus short fields
    "train.global_batch_size=4",
]
SOURCES = {
    "pairwise": (RANDOM_BASE, PAIRWISE_IDS),
    "pairwise_one_order": ([*RANDOM_BASE, "judge.position_debias=none"], PAIRWISE_IDS),
    "pointwise": ([*RANDOM_BASE, "judge.kind=pointwise"], SCORE_IDS),
    "datamodule": (DATAMODULE, None),
    "packed": ([*DATAMODULE, "model.transformer_impl=sdpa"], None),
    "previous": ([*RANDOM_BASE, "scir.implicit_reference=previous"], PAIRWISE_IDS),
    "selection_all": ([*RANDOM_BASE, "scir.selection=all"], PAIRWISE_IDS),
}
TP2 = ["parallel.tensor_model_parallel_size=2"]
SP = ["parallel.sequence_parallel=true"]
PP2 = ["parallel.pipeline_model_parallel_size=2"]
LAYOUTS = {
    "tp2": TP2,
    "tp2_sp": TP2 + SP,
    "pp2_1f1b": PP2,
    "pp2_interleaved_vpp2": PP2 + ["parallel.virtual_pipeline_model_parallel_size=2"],
    "dp2": [],  # two processes with TP=PP=1 leave DP=2
    "tp2_pp2": TP2 + PP2,
    "tp2_sp_pp2": TP2 + SP + PP2,
}
# (source, layout) cases of the two-process and the four-process job
TWO_PROCESS_CASES = [
    *[("pairwise", layout) for layout in ("tp2", "tp2_sp", "pp2_1f1b", "pp2_interleaved_vpp2")],
    ("pairwise", "dp2"),
    *[
        (source, layout)
        for source in ("pairwise_one_order", "pointwise")
        for layout in ("tp2", "tp2_sp", "pp2_1f1b")
    ],
    ("datamodule", "tp2"),
    ("datamodule", "tp2_sp"),
    ("datamodule", "pp2_1f1b"),  # each micro-batch its own length: shapes exchanged
    ("datamodule", "pp2_interleaved_vpp2"),  # one length per schedule call
    ("datamodule", "dp2"),
    *[(source, layout) for source in ("packed",) for layout in ("tp2_sp", "pp2_1f1b", "dp2")],
    ("packed", "pp2_interleaved_vpp2"),
    *[("previous", layout) for layout in ("tp2_sp", "pp2_interleaved_vpp2", "dp2")],
    ("selection_all", "tp2"),
]
FOUR_PROCESS_CASES = [("pairwise", "tp2_pp2"), ("pairwise", "tp2_sp_pp2")]


def write_datamodule_inputs(directory: Path, seed: int = DATA_SEED) -> tuple[str, str]:
    """A tiny SentencePiece model and a pairs JSONL of 4 pairs (two prompts) in ``directory``.

    The pairs' ``ref_logps`` are placeholders: the reference run replaces them (module docstring).
    """
    from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

    model = train_tiny_sentencepiece(directory)
    words = "the sea is wide and blue sort a list in python capital of France is Paris".split()
    rng = random.Random(seed)
    pairs = directory / "pairs.jsonl"
    with open(pairs, "w") as fh:
        for i in range(4):
            if i % 2 == 0:
                prompt = " ".join(rng.choices(words, k=4 + i))
            row = {
                "pair_id": f"p{i // 2}:{i % 2}",
                "prompt_id": f"p{i // 2}",
                "prompt": prompt,
                "response_1": " ".join(rng.choices(words, k=3 + 2 * i)),
                "response_2": " ".join(rng.choices(words, k=6 - i)),
                "ref_logps_1": 0.0,
                "ref_logps_2": 0.0,
            }
            fh.write(json.dumps(row) + "\n")
    return str(model), str(pairs)


def _config(source: str, layout: str | None = None, data_files=None):
    from megatron_scir.config import load_config

    overrides = list(SOURCES[source][0])
    if source in ("datamodule", "packed"):
        overrides.append(f"data.tokenizer_path={data_files[0]}")
    return load_config("tiny", overrides + (LAYOUTS[layout] if layout else []))


def _datamodule_batches(cfg, pairs_path: str):
    from megatron_scir.data import ScirDataModule, build_tokenizer
    from megatron_scir.data.layout import MicroBatchLayout

    dm = ScirDataModule(
        cfg, build_tokenizer(cfg.data), layout=MicroBatchLayout.for_training(cfg), dp_rank=0,
        dp_size=1, train_path=pairs_path,
    )
    dm.setup("fit")
    batches = list(dm.train_dataloader())[:NUM_MICRO]
    return batches, list(dm.verdict_token_ids)


def _run_step(cfg, chunks, batches, candidate_ids) -> dict[str, float]:
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.parallel import state
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.parallel.reductions import step_metrics
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.schedule import run_schedule

    model = wrap_with_ddp(chunks, cfg)
    layout = MicroBatchLayout.for_training(cfg)
    forward_step = make_forward_step(cfg, layout, candidate_ids, tp_group=state.tp_group())
    losses = run_schedule(forward_step, model, batches, forward_only=False)
    return step_metrics(
        losses,
        dp_group=state.dp_group(),
        pp_group=state.pp_group(),
        is_last_stage=state.is_last_stage(),
    )


@torch.no_grad()
def _set_reference_logps(cfg, model, batch, candidate_ids) -> None:
    """ref_logps = policy logps + offsets giving Δ_I = +1 / −2 against the judge's choice."""
    from megatron_scir.data.judges import judge_format
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.models import forward_last_stage
    from megatron_scir.rewards import judge_preference
    from megatron_scir.training.forward_step import packed_seq_params
    from megatron_scir.training.logprob_heads import last_stage_outputs

    layout = MicroBatchLayout.for_training(cfg)
    head_fn = functools.partial(
        last_stage_outputs,
        batch=batch,
        layout=layout,
        candidate_ids=torch.tensor(candidate_ids),
        tp_group=None,
        vocab_size=cfg.model.vocab_size,
    )
    policy, candidates = forward_last_stage(
        model,
        batch["tokens"],
        batch["position_ids"],
        head_fn,
        packed_seq_params=packed_seq_params(batch),
    )
    k = layout.num_pairs
    log_p_judge, log_q_judge = judge_preference(
        *judge_format(cfg.judge).log_odds(candidates, k),
        position_debias=cfg.judge.position_debias,
    )
    centered_judge = 0.5 * (log_p_judge.exp() - log_q_judge.exp())
    assert centered_judge.abs().min() > 1e-4, f"pick another SEED: P_G − ½ = {centered_judge}"
    judge_sign = torch.sign(centered_judge)
    # agree with Δ_I = ±1, disagree with Δ_I = ∓2: P_I never takes one value only (its std
    # would sit at the infinite-slope 0 of the square root, amplifying rounding)
    target_delta = judge_sign * torch.tensor([1.0, -2.0]).repeat(k)[:k]
    # Δ_I = β((π1 − ref1) − (π2 − ref2)) with ref1 = π1 and ref2 = π2 + Δ/β.
    offsets = torch.cat([policy[:k], policy[k:] + target_delta / cfg.scir.beta])
    if cfg.scir.implicit_reference == "previous":  # P_I against π_{t-1}; πref = πθ (step 0)
        batch["prev_logps"], batch["ref_logps"] = offsets, policy.clone()
    else:
        batch["ref_logps"] = offsets


def _source_batches(source: str, cfg, data_files):
    from megatron_scir.testing.scir_batches import random_scir_batch

    if source in ("datamodule", "packed"):
        return _datamodule_batches(cfg, data_files[1])
    generator = torch.Generator().manual_seed(SEED)
    batches = [
        random_scir_batch(cfg, seq_length=SEQ, generator=generator) for _ in range(NUM_MICRO)
    ]
    return batches, SOURCES[source][1]


def _reference(rank, world_size, data_files):
    """Every source's batches (ref_logps set), candidate ids, step metrics and gradients."""
    from megatron_scir.parallel import state
    from megatron_scir.testing.weights import build_with_master_weights, gather_master

    results = {}
    for source in SOURCES:
        cfg = _config(source, data_files=data_files)
        chunks, _ = build_with_master_weights(cfg, seed=SEED)
        batches, candidate_ids = _source_batches(source, cfg, data_files)
        for batch in batches:
            _set_reference_logps(cfg, chunks[0], batch, candidate_ids)
        metrics = _run_step(cfg, chunks, batches, candidate_ids)
        results[source] = (batches, candidate_ids, metrics, gather_master(chunks, grads=True))
        state.destroy_model_parallel()
    return results


def _layouts(rank, world_size, references, cases, data_files):
    """``{"source/layout": (metrics, gradients)}`` of each case, and whether NCCL's contiguity
    rule was enforced."""
    from megatron_scir.parallel import cpu_compat, state
    from megatron_scir.testing.weights import build_with_master_weights, gather_master

    results = {}
    for source, layout in cases:
        batches, candidate_ids, _, _ = references[source]
        cfg = _config(source, layout, data_files)
        chunks, _ = build_with_master_weights(cfg, seed=SEED)
        # Data parallelism splits the micro-batches; TP and PP ranks all see every one.
        mine = batches[state.dp_rank() :: state.dp_size()]
        metrics = _run_step(cfg, chunks, mine, candidate_ids)
        results[f"{source}/{layout}"] = (metrics, gather_master(chunks, grads=True))
        state.destroy_model_parallel()
    return cpu_compat.contiguous_collectives_enforced(), results


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    return write_datamodule_inputs(tmp_path_factory.mktemp("scir-data"))


@pytest.fixture(scope="module")
def reference(data_files):
    (result,) = run_distributed(_reference, world_size=1, args=(data_files,), timeout=300)
    return result


@pytest.fixture(scope="module")
def two_processes(reference, data_files):
    args = (reference, TWO_PROCESS_CASES, data_files)
    return run_distributed(_layouts, world_size=2, args=args, timeout=600)


@pytest.fixture(scope="module")
def four_processes(reference, data_files):
    args = (reference, FOUR_PROCESS_CASES, data_files)
    return run_distributed(_layouts, world_size=4, args=args, timeout=600)


@pytest.mark.parametrize("source", list(SOURCES))
def test_reference_step_mixes_consistent_and_inconsistent_pairs(reference, source):
    _, _, metrics, grads = reference[source]
    assert metrics["scir/consistency_rate"] == 0.5 and metrics["scir/ties"] == 0.0
    assert metrics["loss/pref"] > 0 and metrics["loss/cons"] > 0
    for name, grad in grads.items():
        assert grad.abs().max() > 0, f"{name} gets no gradient in the reference"


def test_datamodule_source_is_real_scir_micro_batches(reference):
    batches, candidate_ids, _, _ = reference["datamodule"]
    # k=2 pairs, pairwise judge with both orders: 8 rows, each micro-batch padded to its own
    # longest row (a multiple of 8), far below the judge budget of 256 tokens
    lengths = [b["tokens"].shape[1] for b in batches]
    assert all(b["tokens"].shape[0] == 8 for b in batches) and len(set(lengths)) == NUM_MICRO
    assert all(s % 8 == 0 and s < 256 for s in lengths)
    assert len(candidate_ids) == 2 and len(set(candidate_ids)) == 2
    for batch in batches:
        assert (batch["verdict_positions"] > 100).all()  # after the judge template's text
        assert batch["loss_mask"][:4].sum() > 0 and batch["loss_mask"][4:].sum() == 0
    packed, packed_ids, _, _ = reference["packed"]
    assert packed_ids == candidate_ids
    for one in packed:
        total, cu = one["tokens"].shape[1], one["cu_seqlens"]
        assert one["tokens"].shape == (1, total) and cu.numel() == 9  # 8 sequences, no row padding
        assert cu[-1] <= total < cu[-1] + 8 and total < max(lengths) * 8
    pairs = sorted(i for b in packed for i in b["pair_indices"].tolist())
    assert pairs == sorted(i for b in batches for i in b["pair_indices"].tolist())


@pytest.mark.parametrize("processes", ["two_processes", "four_processes"])
def test_every_layout_ran_under_the_nccl_contiguity_rule(request, processes):
    for enforced, _ in request.getfixturevalue(processes):
        assert enforced


@pytest.mark.parametrize(
    ("source", "layout"),
    TWO_PROCESS_CASES + FOUR_PROCESS_CASES,
    ids=[f"{s}-{layout}" for s, layout in TWO_PROCESS_CASES + FOUR_PROCESS_CASES],
)
def test_scir_step_under_layout_equals_the_single_process_loss_metrics_and_gradients(
    request, reference, source, layout
):
    _, _, ref_metrics, ref_grads = reference[source]
    four = (source, layout) in FOUR_PROCESS_CASES
    ranks = request.getfixturevalue("four_processes" if four else "two_processes")
    for _, results in ranks:
        metrics, grads = results[f"{source}/{layout}"]
        assert metrics.keys() == ref_metrics.keys()
        for key, value in ref_metrics.items():
            assert metrics[key] == pytest.approx(value, abs=1e-5, nan_ok=True), key
        assert grads.keys() == ref_grads.keys()
        for name, grad in ref_grads.items():
            torch.testing.assert_close(grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)
