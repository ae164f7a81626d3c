"""The sides of a mode, their timed steps, the head-alone peaks and what a run found.

Per mode: median seconds of ``steps`` timed steps after ``warmup`` (the sides alternate step by
step), peak memory of one more step (:mod:`.memory`), the gradient norm, the metrics of the last
step, the tokens each side runs through the model against the real tokens, and the peak of the
output head alone (:func:`head_peaks`).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from functools import partial

import torch

from megatron_scir.testing.step_bench.batches import Batch
from megatron_scir.testing.step_bench.memory import peak_step_bytes, resident_bytes
from megatron_scir.testing.step_bench.options import (
    LOSS_TOLERANCE,
    VERDICT_IDS,
    StepBenchOptions,
)
from megatron_scir.testing.step_bench.peers import (
    hf_pair_loss,
    hf_sft_loss,
    hf_step,
    hf_step_per_kind,
    megatron_step,
    per_kind_tokens,
)
from megatron_scir.training.metrics_log import LOSS_PREFIX

__all__ = [
    "Side",
    "StepBenchResult",
    "head_peaks",
    "measure",
    "mode_sides",
    "pair_loss_diff",
    "processed_tokens",
    "zero_grad_buffers",
]


@dataclasses.dataclass
class Side:
    """One implementation in one mode: how to zero its gradients and take a step."""

    name: str
    zero_grad: Callable[[], None]
    step: Callable[[], dict[str, float]]
    grad_norm: Callable[[], float]
    resident: int
    norm: float = math.nan
    seconds: list[float] = dataclasses.field(default_factory=list)
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    peak: int = 0


def _timed(side: Side) -> None:
    side.zero_grad()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    side.metrics = side.step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    side.seconds.append(time.perf_counter() - start)


def measure(sides: list[Side], *, warmup: int, steps: int) -> None:
    """Warm-up, then timed steps alternating between the sides, then one memory step each."""
    for _ in range(warmup):
        for side in sides:
            _timed(side)
    for side in sides:
        side.seconds.clear()
    for _ in range(steps):
        for side in sides:
            _timed(side)
    for side in sides:
        side.zero_grad()
        side.peak = side.resident + peak_step_bytes(side.step)


def mode_sides(mode, cfg, runtime, model, hf_model, batches) -> list[Side]:
    """megatron-scir, HF (one batch) and HF per kind (policy and judge rows apart) for ``mode``."""
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.sft_step import make_sft_forward_step

    if mode == "sft":
        forward_step = make_sft_forward_step(cfg, tp_group=runtime.tp_group)
        loss_fn = hf_sft_loss
    else:
        ids = VERDICT_IDS if mode == "scir" else None
        layout = MicroBatchLayout.for_training(cfg)
        forward_step = make_forward_step(cfg, layout, ids, tp_group=runtime.tp_group)
        loss_fn = partial(hf_pair_loss, cfg)
    params = [p for chunk in model for p in chunk.parameters()]
    hf_params = list(hf_model.parameters())
    megatron = Side(
        name="megatron-scir",
        zero_grad=lambda: zero_grad_buffers(model),
        step=lambda: megatron_step(runtime, model, forward_step, batches["megatron"]),
        grad_norm=lambda: _norm(p.main_grad for p in params),
        resident=resident_bytes(params + [p.main_grad for p in params]),
    )
    hf = Side(
        name="HF",
        zero_grad=lambda: hf_model.zero_grad(set_to_none=True),
        step=lambda: hf_step(hf_model, loss_fn, batches["hf"]),
        grad_norm=lambda: _norm(p.grad for p in hf_params if p.grad is not None),
        resident=resident_bytes(hf_params),
    )
    per_kind = dataclasses.replace(
        hf,
        name="HF per kind",
        step=lambda: hf_step_per_kind(hf_model, cfg, mode, batches["hf"]),
        seconds=[],
        metrics={},
    )
    return [megatron, hf, per_kind]


def zero_grad_buffers(model: list) -> None:
    """Zero the DDP gradient buffers of every chunk."""
    for chunk in model:
        chunk.zero_grad_buffer()


def _norm(grads) -> float:
    return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads))


def head_peaks(mode: str, cfg, model, hf_model, batches: dict[str, list[Batch]]) -> tuple[int, int]:
    """Peak bytes newly allocated by the output head alone, forward + backward, on the first
    micro-batch's final hidden states: megatron-scir's (``logprob_heads.last_stage_outputs``:
    response positions in chunks, verdict positions) and HF's (``lm_head`` on every position of
    every row, float32 log-softmax, then the same loss)."""
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.models.gpt import OutputHead
    from megatron_scir.training.forward_step import packed_seq_params
    from megatron_scir.training.logprob_heads import last_stage_outputs

    ours_batch, hf_batch = batches["megatron"][0], batches["hf"][0]
    captured = {}

    def keep(*, hidden_states, output_layer, output_weight, scale_logits, **_):
        captured.update(layer=output_layer, weight=output_weight, scale=scale_logits)
        return hidden_states.detach()

    with torch.no_grad():
        hidden = model[0](
            ours_batch["tokens"],
            ours_batch["position_ids"],
            None,
            packed_seq_params=packed_seq_params(ours_batch),
            output_processor=keep,
        )
        hf_hidden = hf_model.model(
            input_ids=hf_batch["tokens"], position_ids=hf_batch["position_ids"]
        ).last_hidden_state
    layout = MicroBatchLayout.for_training(cfg)
    ids = torch.tensor(VERDICT_IDS, device=hidden.device) if mode == "scir" else None

    def ours() -> None:
        head = OutputHead(
            hidden.clone().requires_grad_(),
            captured["layer"],
            captured["weight"],
            captured["scale"],
        )
        policy, candidates = last_stage_outputs(
            head,
            batch=ours_batch,
            layout=layout,
            candidate_ids=ids,
            tp_group=None,
            vocab_size=cfg.model.vocab_size,
            chunk_size=cfg.train.logprob_chunk_size,
        )
        total = policy.sum() + (candidates.sum() if candidates is not None else 0.0)
        total.backward()

    def theirs() -> None:
        logits = hf_model.lm_head(hf_hidden.clone().requires_grad_())
        loss, _ = hf_pair_loss(cfg, logits.float().log_softmax(dim=-1), hf_batch)
        loss.backward()

    peaks = peak_step_bytes(ours), peak_step_bytes(theirs)
    zero_grad_buffers(model)
    hf_model.zero_grad(set_to_none=True)
    return peaks


def processed_tokens(cfg, mode: str, batches: dict[str, list[Batch]]) -> dict[str, int]:
    """Tokens each side runs through the model (padding included), and ``"real"``."""
    per_kind, real = per_kind_tokens(cfg, mode, batches["hf"])
    return {
        "megatron-scir": sum(batch["tokens"].numel() for batch in batches["megatron"]),
        "HF": sum(batch["tokens"].numel() for batch in batches["hf"]),
        "HF per kind": per_kind,
        "real": real,
    }


def pair_loss_diff(first: Side, second: Side) -> float:
    """The largest difference of a ``loss/*`` metric both sides report."""
    ours, theirs = first.metrics, second.metrics
    keys = [key for key in ours if key.startswith(LOSS_PREFIX) and key in theirs]
    return max(abs(ours[key] - theirs[key]) for key in keys)


@dataclasses.dataclass
class StepBenchResult:
    """What a run found, per mode (in the order run).

    Attributes:
        options: what was run.
        sides: ``{mode: [megatron-scir, HF, HF per kind]}``, measured.
        tokens: ``{mode: {side name: tokens processed, "real": real tokens}}``.
        heads: ``{mode: (megatron-scir's, HF's) head-alone peak bytes}`` (not for ``sft``).
    """

    options: StepBenchOptions
    sides: dict[str, list[Side]]
    tokens: dict[str, dict[str, int]]
    heads: dict[str, tuple[int, int]]

    @property
    def worst_loss_diff(self) -> float:
        """The largest ``loss/*`` difference between megatron-scir and any peer, any mode."""
        return max(
            pair_loss_diff(sides[0], other)
            for sides in self.sides.values()
            for other in sides[1:]
        )

    @property
    def passed(self) -> bool:
        """The losses agree within :data:`LOSS_TOLERANCE` (always true when not float32)."""
        return not self.options.checks_loss or self.worst_loss_diff <= LOSS_TOLERANCE
