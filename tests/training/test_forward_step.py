"""The SCIR forward step on the real tiny GPTModel (one gloo process).

- Its loss and gradients equal a dense recomputation from the full logits of every row
  (float64 log_softmax, the losses called directly), for each judge layout and the DPO mode.
- The judge part never allocates an ``[s, b, V/tp]``-sized tensor, in forward or backward; the
  same allocation tracker catches a judge that materialises full logits.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from megatron_scir.testing.distributed import run_distributed

SEQ = 64
BASE = ["model.vocab_size=250", "train.micro_batch_size=2"]  # 250 → 256: padded vocabulary
PAIRWISE_IDS = [17, 200]  # one verdict id on each half of the vocabulary
SCORE_IDS = [10, 130, 20, 140, 30, 249]
LAYOUTS = {
    "pairwise_mean_prob": ([], PAIRWISE_IDS),
    "pairwise_none_js": (["judge.position_debias=none", "scir.divergence=js"], PAIRWISE_IDS),
    "pointwise": (["judge.kind=pointwise", "scir.sft_weight=0.5"], SCORE_IDS),
    "dpo_mode": (["scir.mode=dpo"], None),
    "dpo_mode_policy_rows_only": (["scir.mode=dpo"], None),
    "filler_pair": (["scir.sft_weight=0.5"], PAIRWISE_IDS),
}


class AllocationTracker(TorchDispatchMode):
    """Records the largest tensor (in elements) any op allocates while active.

    Outputs that share storage with an input (views, in-place ops) allocate nothing and are
    not counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_flatten((args, kwargs))[0]
        storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.untyped_storage().data_ptr() not in storages
            ):
                elements = tensor.untyped_storage().nbytes() // tensor.element_size()
                self.largest = max(self.largest, elements)
        return out


def _dense_loss(cfg, batch, candidate_ids, head):
    """The step's loss from full float64 log-softmaxes of every row (TP=1 only)."""
    from megatron_scir.losses import LossOptions, labelled_pair_loss, scir_loss
    from megatron_scir.rewards import expected_scores, sequence_logps

    k, vocab = cfg.train.micro_batch_size, cfg.model.vocab_size
    options = LossOptions.from_config(cfg)
    log_softmax = torch.log_softmax(head.logits(slice(None)).double()[..., :vocab], dim=-1)
    token_logps = log_softmax[: 2 * k].gather(-1, batch["labels"][: 2 * k, :, None])[..., 0]
    policy = sequence_logps(token_logps, batch["loss_mask"][: 2 * k])
    ref, lengths = batch["ref_logps"], batch["response_lengths"]
    common = dict(
        options=options,
        response_lengths=(lengths[:k], lengths[k:]),
        pair_mask=batch["pair_indices"] >= 0,
    )
    logps = (policy[:k], policy[k:], ref[:k], ref[k:])
    if cfg.scir.mode == "dpo":
        return labelled_pair_loss(*logps, batch["pair_labels"], **common)[0]
    judge_rows = torch.arange(2 * k, batch["tokens"].size(0))
    verdict = log_softmax[judge_rows, batch["verdict_positions"]][:, candidate_ids]
    if cfg.judge.kind == "pointwise":
        scores = expected_scores(verdict)
        judge_12, judge_21 = scores[:k] - scores[k:], None
    else:
        odds = verdict[:, 0] - verdict[:, 1]
        one_order = cfg.judge.position_debias == "none"
        judge_12, judge_21 = (odds, None) if one_order else (odds[:k], odds[k:])
    return scir_loss(*logps, judge_12, judge_21, gold_labels=batch["pair_labels"], **common)[0]


def _grads(model) -> dict[str, torch.Tensor]:
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return grads


def _step_vs_dense(cfg, candidate_ids, model, batch):
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.models import forward_last_stage
    from megatron_scir.parallel import state
    from megatron_scir.training.forward_step import make_forward_step

    # the layout of the batch handed in: a labelled mode also takes batches with judge rows
    with_judge = batch["verdict_positions"].numel() > 0
    layout = MicroBatchLayout.from_config(cfg, with_judge=with_judge)
    forward_step = make_forward_step(cfg, layout, candidate_ids, tp_group=state.tp_group())
    output, loss_func = forward_step(iter([batch]), model)
    loss, metrics = loss_func(output)
    loss.backward()
    ours = (loss.item(), _grads(model), metrics)
    dense = forward_last_stage(
        model,
        batch["tokens"],
        batch["position_ids"],
        lambda head: _dense_loss(cfg, batch, candidate_ids, head),
    )
    dense.backward()
    return ours, (dense.item(), _grads(model))


def _judge_allocations(cfg, model, batch):
    """Largest allocation of the verdict-position judge and of a full-logits judge."""
    from megatron_scir.models import forward_last_stage
    from megatron_scir.parallel.vocab_parallel import vocab_parallel_candidate_log_probs
    from megatron_scir.training.logprob_heads import judge_candidate_logps

    k = cfg.train.micro_batch_size
    rows = torch.arange(2 * k, batch["tokens"].size(0))
    positions, ids = batch["verdict_positions"], torch.tensor(PAIRWISE_IDS)
    trackers = {"verdict_position": AllocationTracker(), "full_logits": AllocationTracker()}

    def head_fn(head):
        with trackers["verdict_position"]:
            logps = judge_candidate_logps(
                head, rows, positions, ids, tp_group=None, vocab_size=cfg.model.vocab_size
            )
            torch.autograd.grad(logps.sum(), head.hidden)
        with trackers["full_logits"]:
            full = head.logits(rows)[torch.arange(len(rows)), positions]
            logps = vocab_parallel_candidate_log_probs(
                full, ids, tp_group=None, vocab_size=cfg.model.vocab_size
            )
            torch.autograd.grad(logps.sum(), head.hidden)

    forward_last_stage(model, batch["tokens"], batch["position_ids"], head_fn)
    return {name: tracker.largest for name, tracker in trackers.items()}


POLICY_CHUNK = 4  # response positions per output-layer chunk in the allocation test


def _policy_allocations(cfg, model, batch):
    """Largest allocation of the chunked policy head, and of the full-logits one it replaced."""
    from megatron_scir.models import forward_last_stage
    from megatron_scir.parallel.vocab_parallel import vocab_parallel_log_probs
    from megatron_scir.rewards import sequence_logps
    from megatron_scir.training.logprob_heads import policy_sequence_logps

    policy = slice(0, 2 * cfg.train.micro_batch_size)
    labels, mask = batch["labels"][policy], batch["loss_mask"][policy]
    trackers = {"chunked": AllocationTracker(), "full_logits": AllocationTracker()}
    values = {}

    def head_fn(head):
        with trackers["chunked"]:
            logps = policy_sequence_logps(
                head, policy, labels, mask, tp_group=None, vocab_size=cfg.model.vocab_size,
                chunk_size=POLICY_CHUNK,
            )
            (values["chunked"],) = torch.autograd.grad(logps.sum(), head.hidden)
        with trackers["full_logits"]:
            token = vocab_parallel_log_probs(
                head.logits(policy), labels, tp_group=None, vocab_size=cfg.model.vocab_size
            )
            full = sequence_logps(token, mask)
            (values["full"],) = torch.autograd.grad(full.sum(), head.hidden)
        values["logps"] = (logps.detach(), full.detach())

    forward_last_stage(model, batch["tokens"], batch["position_ids"], head_fn)
    sizes = {name: tracker.largest for name, tracker in trackers.items()}
    return sizes, values, int((mask > 0).sum())


def _single_process(rank, world_size):
    from megatron_scir.config import load_config
    from megatron_scir.parallel.state import destroy_model_parallel
    from megatron_scir.testing.scir_batches import random_scir_batch
    from megatron_scir.testing.weights import build_with_master_weights

    results = {}
    for name, (overrides, candidate_ids) in LAYOUTS.items():
        cfg = load_config("tiny", BASE + overrides)
        (model,), _ = build_with_master_weights(cfg, seed=11)
        batch = random_scir_batch(cfg, seq_length=SEQ, generator=torch.Generator().manual_seed(3))
        batch["ref_logps"] = -torch.linspace(600.0, 700.0, batch["ref_logps"].numel())
        if name == "dpo_mode_policy_rows_only":
            batch = {**batch, "verdict_positions": batch["verdict_positions"][:0]}
            for key in ("tokens", "labels", "position_ids", "loss_mask"):
                batch[key] = batch[key][: 2 * cfg.train.micro_batch_size]
        if name == "filler_pair":
            batch["pair_indices"] = torch.tensor([-1, 1])  # pair 1 is the consistent one
        results[name] = _step_vs_dense(cfg, candidate_ids, model, batch)
        destroy_model_parallel()
    cfg = load_config("tiny", BASE)
    (model,), _ = build_with_master_weights(cfg, seed=11)
    batch = random_scir_batch(cfg, seq_length=SEQ, generator=torch.Generator().manual_seed(4))
    results["allocations"] = _judge_allocations(cfg, model, batch)
    results["policy"] = _policy_allocations(cfg, model, batch)
    results["judge_rows"], results["vocab_shard"] = len(batch["verdict_positions"]), 256
    results["hidden_elements"] = SEQ * batch["tokens"].size(0) * cfg.model.hidden_size
    wrong = {**batch, "tokens": batch["tokens"][:-1], "position_ids": batch["position_ids"][:-1]}
    try:
        _step_vs_dense(cfg, PAIRWISE_IDS, model, wrong)
    except ValueError as error:
        results["layout_error"] = str(error)
    return results


@pytest.fixture(scope="module")
def single_process():
    (results,) = run_distributed(_single_process, world_size=1, timeout=300)
    return results


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_forward_step_loss_and_gradients_equal_a_dense_full_logits_recomputation(
    single_process, layout
):
    (loss, grads, metrics), (dense_loss, dense_grads) = single_process[layout]
    assert loss == pytest.approx(dense_loss, rel=1e-5, abs=1e-6)
    assert grads.keys() == dense_grads.keys()
    for name, grad in grads.items():
        assert dense_grads[name].abs().max() > 0, f"{name} gets no gradient"
        torch.testing.assert_close(grad, dense_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert "loss/total" in metrics
    if layout == "filler_pair":
        assert metrics["scir/p_judge_mean"][1] == 1  # the filler is not counted
        assert metrics["loss/sft"][0] > 0 and metrics["loss/pref"][0] > 0
    if not layout.startswith("dpo_mode"):
        assert 0 < metrics["judge/verdict_mass"][0] < metrics["judge/verdict_mass"][1]


def test_judge_allocates_nothing_of_sequence_times_batch_times_vocab_size(single_process):
    limit = SEQ * single_process["judge_rows"] * single_process["vocab_shard"]
    # The backward fills a gradient of the hidden states [s, b, h]; the bound is meaningful
    # while that is smaller than s·b_judge·V/tp (true for the tiny preset).
    assert single_process["hidden_elements"] < limit
    allocations = single_process["allocations"]
    assert allocations["verdict_position"] < limit, allocations
    # The negative control: the same tracker catches a judge that makes full logits.
    assert allocations["full_logits"] >= limit, allocations


def test_the_policy_head_allocates_one_chunk_of_logits_not_rows_times_sequence(single_process):
    sizes, values, responses = single_process["policy"]
    vocab, rows = single_process["vocab_shard"], 4  # 2k policy rows
    full = rows * SEQ * vocab
    assert responses > 2 * POLICY_CHUNK  # several chunks
    # the chunk's float32 logits, or the gradient of the hidden states [s, b, h]
    bound = max(POLICY_CHUNK * vocab, single_process["hidden_elements"])
    assert sizes["chunked"] <= bound < full, sizes
    assert sizes["full_logits"] >= full, sizes  # the tracker sees the old head's logits
    # and the two heads agree: the same log-probs and the same gradient
    chunked, dense = values["logps"]
    torch.testing.assert_close(chunked, dense, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(values["chunked"], values["full"], rtol=1e-4, atol=1e-7)


def test_a_micro_batch_with_the_wrong_number_of_rows_is_refused_naming_the_layout(single_process):
    message = single_process["layout_error"]
    assert "expected [8, S]" in message and "k=2 pairs" in message and "SCIR_SPEC §9" in message
