"""One step benchmark top to bottom: weights, world, batches, then every mode's sides."""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import torch

from megatron_scir.models.shapes import torch_dtype
from megatron_scir.testing.step_bench.batches import (
    build_megatron_model,
    make_batches,
    mode_config,
)
from megatron_scir.testing.step_bench.measure import (
    StepBenchResult,
    head_peaks,
    measure,
    mode_sides,
    processed_tokens,
)
from megatron_scir.testing.step_bench.options import SHAPES, StepBenchOptions
from megatron_scir.testing.step_bench.report import header_line

__all__ = ["run_step_benchmark"]


def run_step_benchmark(
    options: StepBenchOptions, *, on_ready: Callable[[str], None] | None = None
) -> StepBenchResult:
    """Build both sides with the same random weights and batches, then measure every mode.

    The random Llama of ``options.shape`` is written as a Hugging Face folder (a temporary
    directory), loaded by transformers and converted into Megatron-Core in a parallel world of
    one (CUDA when available, else CPU with gloo).

    Args:
        options: what to run.
        on_ready: called once with :func:`~.report.header_line` when the models and batches are
            built, before the first timed step (e.g. to print it at once).

    Returns:
        The measured sides, token counts and head peaks of every mode of ``options.modes``.
    """
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.testing.hf import tiny_hf_llama

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="bench-step-") as hf_dir:
        hf_model = tiny_hf_llama(
            hf_dir,
            **SHAPES[options.shape],
            dtype=torch_dtype(options.dtype),
            max_position_embeddings=max(2048, options.seq_length),
            seed=0,
        )
        cfgs = {mode: mode_config(hf_dir, options, mode) for mode in ("scir", "dpo")}
        with parallel_world(cfgs["scir"].parallel, seed=0) as runtime:
            model = build_megatron_model(hf_dir, cfgs["scir"])
            hf_model = hf_model.to(device).train()
            batches = make_batches(options, cfgs, runtime, model, device)
            if on_ready is not None:
                on_ready(header_line(options, model, hf_model, device))
            result = StepBenchResult(options=options, sides={}, tokens={}, heads={})
            for mode in options.modes:
                cfg = cfgs["scir" if mode == "scir" else "dpo"]
                sides = mode_sides(mode, cfg, runtime, model, hf_model, batches[mode])
                measure(sides, warmup=options.warmup, steps=options.steps)
                for side in sides:
                    side.norm = side.grad_norm()
                hf_model.zero_grad(set_to_none=True)
                result.sides[mode] = sides
                result.tokens[mode] = processed_tokens(cfg, mode, batches[mode])
                if mode != "sft":
                    result.heads[mode] = head_peaks(mode, cfg, model, hf_model, batches[mode])
    return result
