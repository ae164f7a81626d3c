"""The run configs, the Megatron model and both sides' micro-batches (SCIR_SPEC §9).

``pairs × micro_batches`` pairs of random token ids whose lengths follow ``lengths``
(:func:`synthetic_pairs`: ``uniform`` over the budgets, or ``realistic`` log-normal prompts and
responses), each with two judge sequences (both orders) holding the template
(``judge_overhead`` tokens), the prompt and both responses. Each side gets the batches it would
build: megatron-scir ``collate_pairs`` with the run's training layout (packed with the sdpa spec,
rows padded to the micro-batch's longest with ``local``), HF the same pairs as rows padded to the
micro-batch's longest row (the per-kind peer cuts them per kind). ``dpo`` takes the policy
sequences only; ``sft`` the ``dpo`` rows as padded examples on both sides. ``ref_logps`` come
from a no-grad Megatron forward (``make_reference_forward_step``) plus random offsets, so that
the pairs are not all ties.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from megatron_scir.testing.step_bench.options import REF_OFFSET_SCALE, StepBenchOptions

__all__ = [
    "Batch",
    "build_megatron_model",
    "make_batches",
    "mode_config",
    "synthetic_pairs",
]

Batch = dict[str, torch.Tensor]


def mode_config(hf_dir: str, options: StepBenchOptions, mode: str):
    """The run config of ``mode`` (``sft`` reads only the model: it shares ``dpo``'s)."""
    from megatron_scir.convert import config_from_hf

    prompt = options.policy_length // 2
    overrides = [
        f"model.params_dtype={options.dtype}",
        f"model.transformer_impl={options.transformer_impl}",
        f"data.max_prompt_length={prompt}",
        f"data.max_response_length={options.policy_length - prompt}",
        f"data.judge_max_length={options.judge_length}",
        f"train.micro_batch_size={options.pairs}",
        f"train.global_batch_size={options.pairs * options.micro_batches}",
        f"scir.mode={'scir' if mode == 'scir' else 'dpo'}",
    ]
    return config_from_hf(hf_dir, "tiny", overrides)


def build_megatron_model(hf_dir: str, cfg) -> list:
    """This process's Megatron-Core chunk with the HF folder's weights, wrapped in DDP."""
    from megatron_scir.convert import load_hf_into_model
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.ddp import wrap_with_ddp

    chunks = build_model_chunks(cfg, init_weights=False)  # every weight is loaded below
    load_hf_into_model(chunks, hf_dir, cfg, progress=False)
    return wrap_with_ddp(chunks, cfg)


def synthetic_pairs(options: StepBenchOptions, vocab_size: int) -> list:
    """``pairs × micro_batches`` pairs of random token ids with the lengths of ``lengths``.

    ``uniform``: prompt U[16, P], responses U[8, R] (P, R: the prompt and response budgets,
    half the policy length each); ``realistic``: log-normal prompt (median 60 tokens) and
    response (median 150) lengths cut to the budgets. Each judge sequence holds the template
    (``judge_overhead`` tokens), the prompt and both responses, cut to ``judge_length``: the
    presets' pairwise judge with both orders.
    """
    import numpy as np

    from megatron_scir.data.encode import EncodedPair

    rng = np.random.default_rng(0)
    uniform = options.lengths == "uniform"
    prompt_budget = options.policy_length // 2
    response_budget = options.policy_length - prompt_budget

    def lengths(median: float, low: int, high: int, size: int):
        if uniform:
            return rng.integers(low, high + 1, size)
        return np.clip(rng.lognormal(math.log(median), 0.6, size).astype(int), low, high)

    pairs = []
    for i in range(options.pairs * options.micro_batches):
        (p,) = lengths(60, 16 if uniform else 8, prompt_budget, 1)
        r1, r2 = lengths(150, 8 if uniform else 4, response_budget, 2)
        ids = lambda n: rng.integers(0, vocab_size, int(n)).astype(np.int64)  # noqa: E731
        judge_length = min(options.judge_overhead + p + r1 + r2, options.judge_length)
        pairs.append(
            EncodedPair(
                index=i,
                prompt=ids(p),
                responses=(ids(r1), ids(r2)),
                judge=(ids(judge_length), ids(judge_length)),
                label=(1.0, 0.0, -1.0)[i % 3],
                ref_logps=None,
            )
        )
    return pairs


def make_batches(
    options: StepBenchOptions, cfgs, runtime, model, device
) -> dict[str, dict[str, list[Batch]]]:
    """``{mode: {"megatron": micro-batches, "hf": micro-batches}}`` with the same pairs, on
    ``device``, with ``ref_logps`` where the loss reads them.

    megatron-scir's batches are the trainer's (``collate_pairs`` with the run's training layout:
    packed with the sdpa spec, else rows padded to the micro-batch's longest); the HF peers' are
    the same pairs as rows padded to the micro-batch's longest row (the per-kind peer cuts them
    per kind). ``sft`` reads the ``dpo`` policy rows as padded examples on both sides.
    """
    from megatron_scir.data.collate import collate_pairs
    from megatron_scir.data.layout import MicroBatchLayout

    pairs = synthetic_pairs(options, cfgs["scir"].model.vocab_size)
    k = options.pairs
    groups = [pairs[m * k : (m + 1) * k] for m in range(options.micro_batches)]
    batches = {}
    for mode in ("scir", "dpo"):
        layout = MicroBatchLayout.for_training(cfgs[mode])
        rows = dataclasses.replace(layout, packed=False, pad_multiple=1)
        batches[mode] = {
            side: [collate_pairs(group, layout=form, pad_id=0) for group in groups]
            for side, form in (("megatron", layout), ("hf", rows))
        }
    sft_keys = ("tokens", "labels", "position_ids", "loss_mask")
    sft = [{key: batch[key] for key in sft_keys} for batch in batches["dpo"]["hf"]]
    batches["sft"] = {"megatron": sft, "hf": sft}
    batches = {
        mode: {
            side: [{key: value.to(device) for key, value in batch.items()} for batch in micro]
            for side, micro in sides.items()
        }
        for mode, sides in batches.items()
    }
    generator = torch.Generator().manual_seed(0)
    for mode in ("scir", "dpo"):
        policy_logps = _reference_logps(cfgs[mode], runtime, model, batches[mode]["megatron"])
        for m, logps in enumerate(policy_logps):
            offsets = REF_OFFSET_SCALE * torch.rand(logps.shape, generator=generator)
            for side in ("megatron", "hf"):
                batches[mode][side][m]["ref_logps"] = logps + offsets.to(device)
    return batches


def _reference_logps(cfg, runtime, model, batches: list[Batch]) -> list[torch.Tensor]:
    """log πθ(y|x) ``[2k]`` of every micro-batch at the current weights (no grad)."""
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.training.forward_step import make_reference_forward_step
    from megatron_scir.training.schedule import run_schedule

    layout = MicroBatchLayout.for_training(cfg)  # the batches' layout; the judge is not read
    step = make_reference_forward_step(cfg, layout, None, tp_group=runtime.tp_group)
    with torch.no_grad():
        outputs = run_schedule(step, model, batches, forward_only=True, collect_non_loss_data=True)
    return [output["policy_logps"].float() for output in outputs]
