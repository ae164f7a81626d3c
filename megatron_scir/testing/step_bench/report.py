"""The step benchmark's text: the header line, the Markdown tables and the loss summary line."""

from __future__ import annotations

import statistics

import torch

from megatron_scir.testing.step_bench.measure import StepBenchResult, pair_loss_diff
from megatron_scir.testing.step_bench.options import LOSS_TOLERANCE, StepBenchOptions
from megatron_scir.training.metrics_log import LOSS_TOTAL

__all__ = ["header_line", "loss_summary_line", "tables"]

GIB = 2**30


def header_line(options: StepBenchOptions, model, hf_model, device: torch.device) -> str:
    """``# <shape> Llama (...)``: the model, the device, the batches and how memory is read."""
    params = sum(p.numel() for chunk in model for p in chunk.parameters())
    name = (
        torch.cuda.get_device_name()
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    memory = "CUDA max_memory_allocated" if device.type == "cuda" else "tracked live tensor bytes"
    return (
        f"# {options.shape} Llama ({params / 1e6:.1f}M params, {options.dtype}) on {name}; "
        f"k={options.pairs} pairs, policy {options.policy_length} / judge "
        f"{options.judge_length} tokens, {options.micro_batches} micro-batch(es) per step; "
        f"median of {options.steps} steps after {options.warmup} warm-up; megatron-scir "
        f"{options.transformer_impl} layers, HF {hf_model.config._attn_implementation} "
        f"attention; peak memory: {memory}"
    )


def tables(result: StepBenchResult) -> str:
    """The tables: time, tokens and memory per side; the head alone; SCIR ÷ DPO; the losses and
    gradient norms (lines joined by newlines, blank lines between tables)."""
    results, tokens, heads = result.sides, result.tokens, result.heads
    lines = [
        "| mode | implementation | tokens processed | real tokens | s/step | real tokens/s | "
        "peak memory GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, sides in results.items():
        real = tokens[mode]["real"]
        for side in sides:
            seconds = statistics.median(side.seconds)
            done = tokens[mode][side.name]
            lines.append(
                f"| {mode} | {side.name} | {done:,} ({100 * real / done:.0f} % real) | {real:,} "
                f"| {seconds:.3f} | {real / seconds:,.0f} | {side.peak / GIB:.3f} |"
            )
        ours = sides[0]
        for theirs in sides[1:]:
            speed = statistics.median(theirs.seconds) / statistics.median(ours.seconds)
            lines.append(
                f"| {mode} | **megatron-scir / {theirs.name}** | | | **{speed:.2f}×** | | "
                f"**{ours.peak / theirs.peak:.2f}×** |"
            )
    if heads:
        lines += [
            "",
            "| mode | head alone: peak GiB megatron-scir | peak GiB HF | **ratio** |",
            "|---|---|---|---|",
        ]
        for mode, (ours, theirs) in heads.items():
            lines.append(
                f"| {mode} | {ours / GIB:.3f} | {theirs / GIB:.3f} | **{ours / theirs:.2f}×** |"
            )
    if "scir" in results and "dpo" in results:
        lines += [
            "",
            "| implementation | s/step scir | s/step dpo | **scir ÷ dpo** |",
            "|---|---|---|---|",
        ]
        for scir, dpo in zip(results["scir"], results["dpo"], strict=True):
            a, b = statistics.median(scir.seconds), statistics.median(dpo.seconds)
            lines.append(f"| {scir.name} | {a:.3f} | {b:.3f} | **{a / b:.2f}** |")
    lines += [
        "",
        "| mode | loss/total megatron-scir | loss/total HF | max abs loss diff | "
        "grad norm megatron-scir | grad norm HF | rel grad-norm diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, (ours, *peers) in results.items():
        for theirs in peers:
            norms = ours.norm, theirs.norm
            lines.append(
                f"| {mode} ({theirs.name}) | {ours.metrics[LOSS_TOTAL]:.6f} | "
                f"{theirs.metrics[LOSS_TOTAL]:.6f} | {pair_loss_diff(ours, theirs):.1e} | "
                f"{norms[0]:.4f} | {norms[1]:.4f} | "
                f"{abs(norms[0] - norms[1]) / max(norms[1], 1e-30):.1e} |"
            )
    return "\n".join(lines)


def loss_summary_line(result: StepBenchResult) -> str:
    """The largest loss difference of the run, and whether it was checked."""
    checked = (
        f"checked against {LOSS_TOLERANCE}" if result.options.checks_loss else "unchecked"
    )
    return (
        f"max abs loss difference (megatron-scir vs both HF peers, every loss/* metric; "
        f"{checked}): {result.worst_loss_diff:.2e}"
    )
