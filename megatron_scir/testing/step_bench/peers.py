"""The steps compared: megatron-scir's (the trainer's) and the HF peers' (one batch, per kind).

The HF peers compute the loss from full log-probs ``[B, S, V]``: float32 log-softmax of
``LlamaForCausalLM``'s logits, the labels' log-probs gathered and summed over the response
tokens, the verdict log-probs read at the verdict positions of the judge rows, then the same loss
(``losses.LOSS_MODES`` with the same ``LossOptions``; for ``sft`` the per-token mean NLL of
``training/sft_step.py``); ``loss / M`` backward per micro-batch. Every step returns the
global-batch metrics (``{key: mean}``).
"""

from __future__ import annotations

import torch

from megatron_scir.testing.step_bench.batches import Batch
from megatron_scir.testing.step_bench.options import VERDICT_IDS
from megatron_scir.training.metrics_log import LOSS_TOTAL

__all__ = [
    "hf_pair_loss",
    "hf_pair_loss_parts",
    "hf_sft_loss",
    "hf_step",
    "hf_step_per_kind",
    "megatron_step",
    "per_kind_tokens",
    "real_lengths",
]


def megatron_step(runtime, model, forward_step, batches: list[Batch]) -> dict[str, float]:
    """The trainer's forward + backward over ``batches``; the global-batch metrics."""
    from megatron_scir.parallel.reductions import step_metrics
    from megatron_scir.training.schedule import run_schedule

    losses = run_schedule(forward_step, model, batches, forward_only=False)
    return step_metrics(
        losses, dp_group=runtime.dp_group, pp_group=runtime.pp_group, is_last_stage=True
    )


def hf_step(hf_model, loss_fn, batches: list[Batch]) -> dict[str, float]:
    """Forward + backward of the HF model over ``batches``, ``loss / M`` per micro-batch."""
    from megatron_scir.parallel.reductions import reduce_metrics

    per_microbatch = []
    for batch in batches:
        logits = hf_model(input_ids=batch["tokens"], position_ids=batch["position_ids"]).logits
        loss, metrics = loss_fn(logits.float().log_softmax(dim=-1), batch)
        (loss / len(batches)).backward()
        per_microbatch.append(metrics)
    return reduce_metrics(per_microbatch)


def hf_pair_loss(cfg, logps: torch.Tensor, batch: Batch):
    """The SCIR/DPO loss from full log-probs ``[B, S, V]`` (what ``forward_step._loss_func``
    computes from the vocab-parallel head)."""
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.losses import loss_mode

    layout = MicroBatchLayout.for_training(cfg)
    judge = logps[layout.judge_rows] if loss_mode(cfg.scir.mode).judge_rows else None
    return hf_pair_loss_parts(cfg, logps[layout.policy_rows], judge, batch)


def hf_pair_loss_parts(cfg, policy: torch.Tensor, judge: torch.Tensor | None, batch: Batch):
    """The same loss from the policy rows' log-probs ``[2k, Lp, V]`` and the judge rows'
    ``[J, Lj, V]`` (each as long as its own rows need)."""
    from megatron_scir.data.judges import judge_format
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.losses import LossOptions, PairTensors, loss_mode

    mode = loss_mode(cfg.scir.mode)
    layout = MicroBatchLayout.for_training(cfg, mode)
    width = policy.size(1)
    labels = batch["labels"][layout.policy_rows, :width]
    token_logps = policy.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    policy_logps = (token_logps * batch["loss_mask"][layout.policy_rows, :width]).sum(dim=-1)
    judge_logits = None
    if mode.judge_rows:
        rows = torch.arange(judge.size(0), device=judge.device)
        verdict = judge[rows, batch["verdict_positions"]][:, list(VERDICT_IDS)]
        judge_logits = judge_format(cfg.judge).log_odds(verdict, layout.num_pairs)
    y1, y2 = layout.policy_side_rows(0), layout.policy_side_rows(1)
    ref, lengths = batch["ref_logps"], batch["response_lengths"]
    pairs = PairTensors(
        policy_logps=(policy_logps[y1], policy_logps[y2]),
        ref_logps=(ref[y1], ref[y2]),
        pair_labels=batch["pair_labels"],
        response_lengths=(lengths[y1], lengths[y2]),
        pair_mask=batch["pair_indices"] >= 0,
        judge_logits=judge_logits,
    )
    return mode.loss(pairs, LossOptions.from_config(cfg))


def real_lengths(batch: Batch, num_policy_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Real tokens of each policy row (its last response label + 1) and judge row (its verdict
    position + 1): what a peer that pads each kind to its longest row processes."""
    mask = batch["loss_mask"][:num_policy_rows] > 0
    last = torch.where(mask, torch.arange(mask.size(1), device=mask.device), -1).amax(dim=-1)
    judge = batch.get("verdict_positions", torch.empty(0, dtype=torch.int64)) + 1
    return last + 2, judge


def _policy_rows(layout, mode: str, batch: Batch) -> int:
    """Rows read as policy (or SFT) sequences: every row in ``sft``, else the layout's 2k."""
    return batch["tokens"].size(0) if mode == "sft" else layout.num_policy_rows


def _hf_log_probs(hf_model, batch: Batch, rows: slice, width: int) -> torch.Tensor:
    """float32 log-softmax of the HF model over ``rows``, cut to their first ``width`` tokens."""
    logits = hf_model(
        input_ids=batch["tokens"][rows, :width], position_ids=batch["position_ids"][rows, :width]
    ).logits
    return logits.float().log_softmax(dim=-1)


def hf_step_per_kind(hf_model, cfg, mode: str, batches: list[Batch]) -> dict[str, float]:
    """HF with the policy rows and the judge rows as two batches, each padded only to its own
    longest row (the peer a careful user writes without packing)."""
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.parallel.reductions import reduce_metrics

    layout = MicroBatchLayout.for_training(cfg)
    per_microbatch = []
    for batch in batches:
        policy_rows = _policy_rows(layout, mode, batch)
        policy_len, judge_len = real_lengths(batch, policy_rows)
        width = int(policy_len.max())
        logits = _hf_log_probs(hf_model, batch, slice(0, policy_rows), width)
        if mode == "sft":
            trimmed = {key: batch[key][:, :width] for key in ("labels", "loss_mask")}
            loss, metrics = hf_sft_loss(logits, trimmed)
        else:
            judge = None
            if mode == "scir":
                judge = _hf_log_probs(hf_model, batch, layout.judge_rows, int(judge_len.max()))
            loss, metrics = hf_pair_loss_parts(cfg, logits, judge, batch)
        (loss / len(batches)).backward()
        per_microbatch.append(metrics)
    return reduce_metrics(per_microbatch)


def per_kind_tokens(cfg, mode: str, batches: list[Batch]) -> tuple[int, int]:
    """(tokens the per-kind peer processes, real tokens) over ``batches``."""
    from megatron_scir.data.layout import MicroBatchLayout

    layout = MicroBatchLayout.for_training(cfg)
    processed = real = 0
    for batch in batches:
        policy_rows = _policy_rows(layout, mode, batch)
        policy_len, judge_len = real_lengths(batch, policy_rows)
        if mode != "scir":
            judge_len = judge_len[:0]
        processed += policy_rows * int(policy_len.max())
        processed += len(judge_len) * int(judge_len.max()) if len(judge_len) else 0
        real += int(policy_len.sum()) + int(judge_len.sum())
    return processed, real


def hf_sft_loss(logps: torch.Tensor, batch: Batch):
    """Per-token mean NLL of the targets (``training/sft_step.py``)."""
    from megatron_scir.losses.preference import metric

    token_logps = logps.gather(-1, batch["labels"].unsqueeze(-1)).squeeze(-1)
    mask = batch["loss_mask"] > 0
    nll = torch.where(mask, -token_logps, 0.0).sum()
    num_tokens = mask.sum()
    loss = nll / num_tokens.clamp(min=1)
    return loss, {"loss/sft": metric(nll, num_tokens), LOSS_TOTAL: metric(loss, 1)}
