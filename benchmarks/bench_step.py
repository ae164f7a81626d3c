"""One training step of megatron-scir vs the same step done the obvious way in transformers.

Both sides take the same weights (a random Llama of the chosen shape, written as a Hugging Face
folder, loaded by transformers and converted into Megatron-Core by
``megatron_scir.convert.load_hf_into_model``) and the same micro-batches, in one process. A step
is forward + backward over ``--micro-batches`` micro-batches, the loss and gradients as the
trainer computes them, no optimizer update (gradients are zeroed before each step, outside the
timing):

- **megatron-scir**: the trainer's path. The model wrapped in Megatron DDP
  (``parallel.ddp.wrap_with_ddp``) inside ``parallel_world`` (a world of one; gloo + the CPU
  compatibility layer without CUDA), ``get_forward_backward_func`` with the real forward step
  (``training.forward_step.make_forward_step`` for ``scir``/``dpo``,
  ``training.sft_step.make_sft_forward_step`` for ``sft``), then ``step_metrics``.
- **HF**: ``LlamaForCausalLM`` on the whole micro-batch: full logits ``[B, S, V]`` for every row
  (judge rows included), float32 log-softmax, the labels' log-probs gathered and summed over the
  response tokens, the verdict log-probs read at the verdict positions of the judge rows (both
  orders), then the same loss (``losses.LOSS_MODES`` with the same ``LossOptions``; for ``sft``
  the per-token mean NLL of ``training/sft_step.py``); ``loss / M`` backward per micro-batch.

Batches (SCIR_SPEC §9): ``pairs × micro-batches`` pairs of random token ids whose lengths follow
``--lengths`` (``synthetic_pairs``: ``uniform`` over the budgets, or ``realistic`` log-normal
prompts and responses), each with two judge sequences (both orders) holding the template
(``--judge-overhead`` tokens), the prompt and both responses. Each side gets the batches it would
build: megatron-scir ``collate_pairs`` with the run's layout (packed with the sdpa spec, rows
padded to the micro-batch's longest with ``local``), HF the same pairs as rows padded to the
micro-batch's longest row (the per-kind peer cuts them per kind). ``dpo`` takes the policy
sequences only; ``sft`` the ``dpo`` rows as padded examples on both sides. ``ref_logps`` come from
a no-grad Megatron forward (``make_reference_forward_step``) plus random offsets, so that the
pairs are not all ties.

Reported per mode: tokens each side runs through the model against the real tokens, median
seconds of ``--steps`` timed steps after ``--warmup`` (the sides alternate step by step), real
tokens/s, peak memory of one more step, the peak of the output head alone (``head_peaks``), the
SCIR ÷ DPO time of each side, the loss of every side and the gradient norm of every side.
Peak memory = the side's resident tensors (weights; megatron-scir's DDP gradient buffer) + the
step's peak of newly allocated tensors: on CUDA the allocator's ``max_memory_allocated`` over
``memory_allocated`` at the start; on CPU the peak sum of live tensor storages created during
the step, tracked op by op by a ``TorchDispatchMode`` (allocator-independent; kernels' internal
workspaces are not seen). The script exits with status
1 when a float32 loss differs by more than 1e-4.

    python benchmarks/bench_step.py --shape tiny --steps 1 --warmup 0      # smoke test
    python benchmarks/bench_step.py --shape small --pairs 4 --policy-length 512 \\
        --judge-length 1024 --steps 2 --modes scir,dpo                     # docs/performance.md
    python benchmarks/bench_step.py --shape medium --dtype bfloat16 --pairs 8 \\
        --policy-length 1024 --judge-length 2048                           # one GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import tempfile
import time
import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from megatron_scir.config.choices import Dtype, TransformerImpl, choices
from megatron_scir.models.shapes import torch_dtype
from megatron_scir.testing.hf import LLAMA_SHAPES as SHAPES

MODES = ("scir", "dpo", "sft")
VERDICT_IDS = (17, 200)  # the judge's "first response wins" / "second wins" ids (any shape)
LOSS_TOLERANCE = 1e-4  # float32
REF_OFFSET_SCALE = 20.0  # |log πref − log πθ| spread at the start, as examples/minimal_scir_step.py

Batch = dict[str, torch.Tensor]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--dtype", choices=choices(Dtype), default=Dtype.FLOAT32)
    parser.add_argument("--pairs", type=int, default=2, help="k, pairs per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=1, help="M per step")
    parser.add_argument("--policy-length", type=int, default=128, help="prompt + response")
    parser.add_argument("--judge-length", type=int, default=256)
    parser.add_argument(
        "--lengths",
        choices=("uniform", "realistic"),
        default="realistic",
        help="pair length distribution (see synthetic_pairs)",
    )
    parser.add_argument(
        "--judge-overhead",
        type=int,
        default=140,
        help="tokens of the judge template around the prompt and responses (the presets' "
        "pairwise template with a Llama-3 chat header: about 140)",
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: scir,dpo,sft")
    parser.add_argument(
        "--transformer-impl",
        choices=[TransformerImpl.LOCAL, TransformerImpl.SDPA],
        default=TransformerImpl.SDPA,
        help="megatron-scir's layer spec (HF runs its default attention, SDPA)",
    )
    args = parser.parse_args(argv)
    args.modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    if unknown := sorted(set(args.modes) - set(MODES)):
        parser.error(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    if min(args.policy_length, args.judge_length) < 64:
        parser.error("--policy-length and --judge-length must be at least 64 (random batches)")
    if min(args.pairs, args.micro_batches, args.steps) < 1 or args.warmup < 0:
        parser.error("--pairs, --micro-batches and --steps must be >= 1, --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------------------
# Memory


class _NewTensorBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created while active, and their peak (CPU).

    An op's output is counted once per storage, unless it shares a storage with one of the op's
    inputs (a view, an in-place or ``out=`` op): tensors that existed before, such as the
    weights and the gradient buffers, are never counted here. A storage stops counting when it
    is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if _is_dense(t)}
        for tensor in tree_leaves(out):
            if not _is_dense(tensor):
                continue
            storage = tensor.untyped_storage()
            if id(storage) in inputs or storage in self._seen:
                continue
            nbytes = storage.nbytes()
            self._seen[storage] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, nbytes)
        return out


def _is_dense(value) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided


def resident_bytes(tensors) -> int:
    """Bytes of the distinct storages behind ``tensors`` (weights, gradient buffers)."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_step_bytes(step: Callable[[], object]) -> int:
    """Peak bytes newly allocated by one ``step()`` (CUDA allocator, else the dispatch mode)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    tracker = _NewTensorBytes()
    with tracker:
        step()
    return tracker.peak


# ---------------------------------------------------------------------------------------------
# Models and batches


def mode_config(hf_dir: str, args: argparse.Namespace, mode: str):
    """The run config of ``mode`` (``sft`` reads only the model: it shares ``dpo``'s)."""
    from megatron_scir.convert import config_from_hf

    prompt = args.policy_length // 2
    overrides = [
        f"model.params_dtype={args.dtype}",
        f"model.transformer_impl={args.transformer_impl}",
        f"data.max_prompt_length={prompt}",
        f"data.max_response_length={args.policy_length - prompt}",
        f"data.judge_max_length={args.judge_length}",
        f"train.micro_batch_size={args.pairs}",
        f"train.global_batch_size={args.pairs * args.micro_batches}",
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


def synthetic_pairs(args, vocab_size: int) -> list:
    """``pairs × micro-batches`` pairs of random token ids with the lengths of ``--lengths``.

    ``uniform``: prompt U[16, P], responses U[8, R] (P, R: the prompt and response budgets,
    half the policy length each); ``realistic``: log-normal prompt (median 60 tokens) and
    response (median 150) lengths cut to the budgets. Each judge sequence holds the template
    (``--judge-overhead`` tokens), the prompt and both responses, cut to ``--judge-length``: the
    presets' pairwise judge with both orders.
    """
    import numpy as np

    from megatron_scir.data.encode import EncodedPair

    rng = np.random.default_rng(0)
    prompt_budget = args.policy_length // 2
    response_budget = args.policy_length - prompt_budget

    def lengths(median: float, low: int, high: int, size: int):
        if args.lengths == "uniform":
            return rng.integers(low, high + 1, size)
        return np.clip(rng.lognormal(math.log(median), 0.6, size).astype(int), low, high)

    pairs = []
    for i in range(args.pairs * args.micro_batches):
        (p,) = lengths(60, 16 if args.lengths == "uniform" else 8, prompt_budget, 1)
        r1, r2 = lengths(150, 8 if args.lengths == "uniform" else 4, response_budget, 2)
        ids = lambda n: rng.integers(0, vocab_size, int(n)).astype(np.int64)  # noqa: E731
        judge_length = min(args.judge_overhead + p + r1 + r2, args.judge_length)
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


def make_batches(args, cfgs, runtime, model, device) -> dict[str, dict[str, list[Batch]]]:
    """``{mode: {"megatron": micro-batches, "hf": micro-batches}}`` with the same pairs, on
    ``device``, with ``ref_logps`` where the loss reads them.

    megatron-scir's batches are the trainer's (``collate_pairs`` with the run's layout: packed
    with the sdpa spec, else rows padded to the micro-batch's longest); the HF peers' are the
    same pairs as rows padded to the micro-batch's longest row (the per-kind peer cuts them per
    kind). ``sft`` reads the ``dpo`` policy rows as padded examples on both sides.
    """
    from megatron_scir.data.collate import collate_pairs
    from megatron_scir.data.layout import MicroBatchLayout

    pairs = synthetic_pairs(args, cfgs["scir"].model.vocab_size)
    k = args.pairs
    groups = [pairs[m * k : (m + 1) * k] for m in range(args.micro_batches)]
    batches = {}
    for mode in ("scir", "dpo"):
        layout = MicroBatchLayout.from_config(cfgs[mode])
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

    layout = MicroBatchLayout.from_config(cfg)
    step = make_reference_forward_step(cfg, None, layout, tp_group=runtime.tp_group)
    with torch.no_grad():
        outputs = run_schedule(step, model, batches, forward_only=True, collect_non_loss_data=True)
    return [output["policy_logps"].float() for output in outputs]


# ---------------------------------------------------------------------------------------------
# The two steps


def megatron_step(runtime, model, forward_step, batches: list[Batch]) -> dict[str, float]:
    """The trainer's forward + backward over ``batches``; the global-batch metrics."""
    from megatron_scir.training.forward_step import step_metrics
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

    layout = MicroBatchLayout.from_config(cfg)
    judge = logps[layout.judge_rows] if loss_mode(cfg.scir.mode).needs_judge else None
    return hf_pair_loss_parts(cfg, logps[layout.policy_rows], judge, batch)


def hf_pair_loss_parts(cfg, policy: torch.Tensor, judge: torch.Tensor | None, batch: Batch):
    """The same loss from the policy rows' log-probs ``[2k, Lp, V]`` and the judge rows'
    ``[J, Lj, V]`` (each as long as its own rows need)."""
    from megatron_scir.data.judges import judge_format
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.losses import LossOptions, PairTensors, loss_mode

    layout, mode = MicroBatchLayout.from_config(cfg), loss_mode(cfg.scir.mode)
    width = policy.size(1)
    labels = batch["labels"][layout.policy_rows, :width]
    token_logps = policy.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    policy_logps = (token_logps * batch["loss_mask"][layout.policy_rows, :width]).sum(dim=-1)
    judge_logits = None
    if mode.needs_judge:
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

    layout = MicroBatchLayout.from_config(cfg)
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

    layout = MicroBatchLayout.from_config(cfg)
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
    return loss, {"loss/sft": metric(nll, num_tokens), "loss/total": metric(loss, 1)}


# ---------------------------------------------------------------------------------------------
# Measuring


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


def measure(sides: list[Side], args: argparse.Namespace) -> None:
    """Warm-up, then timed steps alternating between the sides, then one memory step each."""
    for _ in range(args.warmup):
        for side in sides:
            _timed(side)
    for side in sides:
        side.seconds.clear()
    for _ in range(args.steps):
        for side in sides:
            _timed(side)
    for side in sides:
        side.zero_grad()
        side.peak = side.resident + peak_step_bytes(side.step)


def mode_sides(mode, cfg, runtime, model, hf_model, batches) -> list[Side]:
    """megatron-scir, HF (one batch) and HF per kind (policy and judge rows apart) for ``mode``."""
    from functools import partial

    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.sft_step import make_sft_forward_step

    if mode == "sft":
        forward_step = make_sft_forward_step(cfg, tp_group=runtime.tp_group)
        loss_fn = hf_sft_loss
    else:
        ids = VERDICT_IDS if mode == "scir" else None
        forward_step = make_forward_step(cfg, ids, tp_group=runtime.tp_group)
        loss_fn = partial(hf_pair_loss, cfg)
    params = [p for chunk in model for p in chunk.parameters()]
    hf_params = list(hf_model.parameters())
    megatron = Side(
        name="megatron-scir",
        zero_grad=lambda: _zero_grad_buffers(model),
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


def _zero_grad_buffers(model: list) -> None:
    for chunk in model:
        chunk.zero_grad_buffer()


def _norm(grads) -> float:
    return math.sqrt(sum(float(g.float().pow(2).sum()) for g in grads))


def head_peaks(mode: str, cfg, model, hf_model, batches: dict[str, list[Batch]]) -> tuple[int, int]:
    """Peak bytes newly allocated by the output head alone, forward + backward, on the first
    micro-batch's final hidden states: megatron-scir's (``forward_step.last_stage_outputs``:
    response positions in chunks, verdict positions) and HF's (``lm_head`` on every position of
    every row, float32 log-softmax, then the same loss)."""
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.models.gpt import OutputHead
    from megatron_scir.training.forward_step import last_stage_outputs, packed_seq_params

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
    layout = MicroBatchLayout.from_config(cfg)
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
    _zero_grad_buffers(model)
    hf_model.zero_grad(set_to_none=True)
    return peaks


# ---------------------------------------------------------------------------------------------
# Report


def _loss_diff(sides: list[Side]) -> float:
    """The largest ``loss/*`` difference between the first side and any other."""
    return max(_pair_loss_diff(sides[0], other) for other in sides[1:])


def _pair_loss_diff(first: Side, second: Side) -> float:
    ours, theirs = first.metrics, second.metrics
    keys = [key for key in ours if key.startswith("loss/") and key in theirs]
    return max(abs(ours[key] - theirs[key]) for key in keys)


def processed_tokens(cfg, mode: str, batches: dict[str, list[Batch]]) -> dict[str, int]:
    """Tokens each side runs through the model (padding included), and ``"real"``."""
    per_kind, real = per_kind_tokens(cfg, mode, batches["hf"])
    return {
        "megatron-scir": sum(batch["tokens"].numel() for batch in batches["megatron"]),
        "HF": sum(batch["tokens"].numel() for batch in batches["hf"]),
        "HF per kind": per_kind,
        "real": real,
    }


def print_tables(
    results: dict[str, list[Side]],
    tokens: dict[str, dict[str, int]],
    heads: dict[str, tuple[int, int]],
) -> None:
    print(
        "| mode | implementation | tokens processed | real tokens | s/step | real tokens/s | "
        "peak memory GiB |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, sides in results.items():
        real = tokens[mode]["real"]
        for side in sides:
            seconds = statistics.median(side.seconds)
            done = tokens[mode][side.name]
            print(
                f"| {mode} | {side.name} | {done:,} ({100 * real / done:.0f} % real) | {real:,} "
                f"| {seconds:.3f} | {real / seconds:,.0f} | {side.peak / 2**30:.3f} |"
            )
        ours = sides[0]
        for theirs in sides[1:]:
            speed = statistics.median(theirs.seconds) / statistics.median(ours.seconds)
            print(
                f"| {mode} | **megatron-scir / {theirs.name}** | | | **{speed:.2f}×** | | "
                f"**{ours.peak / theirs.peak:.2f}×** |"
            )
    if heads:
        print()
        print("| mode | head alone: peak GiB megatron-scir | peak GiB HF | **ratio** |")
        print("|---|---|---|---|")
        for mode, (ours, theirs) in heads.items():
            print(
                f"| {mode} | {ours / 2**30:.3f} | {theirs / 2**30:.3f} | **{ours / theirs:.2f}×** |"
            )
    if "scir" in results and "dpo" in results:
        print()
        print("| implementation | s/step scir | s/step dpo | **scir ÷ dpo** |")
        print("|---|---|---|---|")
        for scir, dpo in zip(results["scir"], results["dpo"], strict=True):
            a, b = statistics.median(scir.seconds), statistics.median(dpo.seconds)
            print(f"| {scir.name} | {a:.3f} | {b:.3f} | **{a / b:.2f}** |")
    print()
    print(
        "| mode | loss/total megatron-scir | loss/total HF | max abs loss diff | "
        "grad norm megatron-scir | grad norm HF | rel grad-norm diff |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, (ours, *peers) in results.items():
        for theirs in peers:
            norms = ours.norm, theirs.norm
            print(
                f"| {mode} ({theirs.name}) | {ours.metrics['loss/total']:.6f} | "
                f"{theirs.metrics['loss/total']:.6f} | {_pair_loss_diff(ours, theirs):.1e} | "
                f"{norms[0]:.4f} | {norms[1]:.4f} | "
                f"{abs(norms[0] - norms[1]) / max(norms[1], 1e-30):.1e} |"
            )


def main(argv: list[str] | None = None) -> int:
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.testing.hf import tiny_hf_llama

    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    seq_length = max(args.policy_length, args.judge_length)
    with tempfile.TemporaryDirectory(prefix="bench-step-") as hf_dir:
        hf_model = tiny_hf_llama(
            hf_dir,
            **SHAPES[args.shape],
            dtype=torch_dtype(args.dtype),
            max_position_embeddings=max(2048, seq_length),
            seed=0,
        )
        cfgs = {mode: mode_config(hf_dir, args, mode) for mode in ("scir", "dpo")}
        with parallel_world(cfgs["scir"].parallel, seed=0) as runtime:
            model = build_megatron_model(hf_dir, cfgs["scir"])
            hf_model = hf_model.to(device).train()
            batches = make_batches(args, cfgs, runtime, model, device)
            _print_header(args, model, hf_model, device)
            results, tokens, heads = {}, {}, {}
            for mode in args.modes:
                cfg = cfgs["scir" if mode == "scir" else "dpo"]
                sides = mode_sides(mode, cfg, runtime, model, hf_model, batches[mode])
                measure(sides, args)
                for side in sides:
                    side.norm = side.grad_norm()
                hf_model.zero_grad(set_to_none=True)
                results[mode] = sides
                tokens[mode] = processed_tokens(cfg, mode, batches[mode])
                if mode != "sft":
                    heads[mode] = head_peaks(mode, cfg, model, hf_model, batches[mode])
            print_tables(results, tokens, heads)
    worst = max(_loss_diff(sides) for sides in results.values())
    checked = f"checked against {LOSS_TOLERANCE}" if args.dtype == Dtype.FLOAT32 else "unchecked"
    print(
        f"\nmax abs loss difference (megatron-scir vs both HF peers, every loss/* metric; "
        f"{checked}): "
        f"{worst:.2e}"
    )
    if args.dtype == Dtype.FLOAT32 and not worst <= LOSS_TOLERANCE:
        print(f"FAIL: the losses differ by more than {LOSS_TOLERANCE} in float32", file=sys.stderr)
        return 1
    return 0


def _print_header(args, model, hf_model, device) -> None:
    params = sum(p.numel() for chunk in model for p in chunk.parameters())
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    memory = "CUDA max_memory_allocated" if device.type == "cuda" else "tracked live tensor bytes"
    print(
        f"# {args.shape} Llama ({params / 1e6:.1f}M params, {args.dtype}) on {name}; "
        f"k={args.pairs} pairs, policy {args.policy_length} / judge {args.judge_length} tokens, "
        f"{args.micro_batches} micro-batch(es) per step; median of {args.steps} steps after "
        f"{args.warmup} warm-up; megatron-scir {args.transformer_impl} layers, HF "
        f"{hf_model.config._attn_implementation} attention; peak memory: {memory}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
