"""One training step of megatron-scir vs the same step done the obvious way in transformers.

The machinery of ``benchmarks/bench_step.py`` (the script parses the command line into
:class:`StepBenchOptions`, calls :func:`run_step_benchmark` and prints the tables of
:mod:`.report`).

Both sides take the same weights (a random Llama of the chosen shape, written as a Hugging Face
folder, loaded by transformers and converted into Megatron-Core by
``megatron_scir.convert.load_hf_into_model``) and the same micro-batches, in one process. A step
is forward + backward over ``micro_batches`` micro-batches, the loss and gradients as the
trainer computes them, no optimizer update (gradients are zeroed before each step, outside the
timing):

- **megatron-scir**: the trainer's path. The model wrapped in Megatron DDP
  (``parallel.ddp.wrap_with_ddp``) inside ``parallel_world`` (a world of one; gloo + the CPU
  compatibility layer without CUDA), ``get_forward_backward_func`` with the real forward step
  (``training.forward_step.make_forward_step`` in the mode's training layout,
  ``MicroBatchLayout.for_training``, for ``scir``/``dpo``;
  ``training.sft_step.make_sft_forward_step`` for ``sft``), then
  ``parallel.reductions.step_metrics``.
- **HF**: ``LlamaForCausalLM`` on the whole micro-batch: full logits ``[B, S, V]`` for every row
  (judge rows included), float32 log-softmax, the labels' log-probs gathered and summed over the
  response tokens, the verdict log-probs read at the verdict positions of the judge rows (both
  orders), then the same loss (``losses.LOSS_MODES`` with the same ``LossOptions``; for ``sft``
  the per-token mean NLL of ``training/sft_step.py``); ``loss / M`` backward per micro-batch.
- **HF per kind**: the same, with the policy rows and the judge rows as two batches, each padded
  only to its own longest row.

Modules (no import cycles; each imports only the ones above it):

- :mod:`.options`: :class:`StepBenchOptions` and the constants;
- :mod:`.memory`: resident bytes and the peak bytes of one step (CUDA allocator, or a
  ``TorchDispatchMode`` that tracks live tensor storages on CPU);
- :mod:`.batches`: the run configs, the Megatron model, the synthetic pairs and both sides'
  micro-batches (with ``ref_logps``);
- :mod:`.peers`: the megatron-scir step and the HF peers (one batch, per kind);
- :mod:`.measure`: the sides of a mode, the timed steps, the head-alone peaks, the results;
- :mod:`.report`: the header and the tables (text);
- :mod:`.run`: :func:`run_step_benchmark`, top to bottom.
"""

from __future__ import annotations

from megatron_scir.testing.step_bench.measure import Side, StepBenchResult
from megatron_scir.testing.step_bench.memory import (
    NewTensorBytes,
    peak_step_bytes,
    resident_bytes,
)
from megatron_scir.testing.step_bench.options import (
    LENGTHS,
    LOSS_TOLERANCE,
    MODES,
    SHAPES,
    StepBenchOptions,
)
from megatron_scir.testing.step_bench.report import header_line, loss_summary_line, tables
from megatron_scir.testing.step_bench.run import run_step_benchmark

__all__ = [
    "LENGTHS",
    "LOSS_TOLERANCE",
    "MODES",
    "SHAPES",
    "NewTensorBytes",
    "Side",
    "StepBenchOptions",
    "StepBenchResult",
    "header_line",
    "loss_summary_line",
    "peak_step_bytes",
    "resident_bytes",
    "run_step_benchmark",
    "tables",
]
