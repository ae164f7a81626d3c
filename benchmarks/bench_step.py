"""One training step of megatron-scir vs the same step done the obvious way in transformers.

Both sides take the same weights (a random Llama of the chosen shape, converted into
Megatron-Core) and the same micro-batches, in one process; a step is forward + backward over
``--micro-batches`` micro-batches of ``--pairs`` pairs, no optimizer update. megatron-scir runs
the trainer's path (Megatron DDP, the real forward step in the mode's training layout,
``step_metrics``); HF runs ``LlamaForCausalLM`` on the whole micro-batch (full logits, float32
log-softmax, the same loss), and once more with the policy and judge rows apart ("HF per kind").
The machinery (shapes, batches, peers, timing, memory tracking, tables) and its full description
are in ``megatron_scir/testing/step_bench/``; this script parses the command line, runs it and
prints.

Reported per mode: tokens each side runs through the model against the real tokens, median
seconds of ``--steps`` timed steps after ``--warmup`` (the sides alternate step by step), real
tokens/s, peak memory of one more step (CUDA ``max_memory_allocated``, or the live tensor bytes
tracked op by op on CPU), the peak of the output head alone, the SCIR ÷ DPO time of each side,
the loss of every side and the gradient norm of every side. The script exits with status 1 when
a float32 loss differs by more than 1e-4.

    python benchmarks/bench_step.py --shape tiny --steps 1 --warmup 0      # smoke test
    python benchmarks/bench_step.py --shape small --pairs 4 --policy-length 512 \\
        --judge-length 1024 --steps 2 --modes scir,dpo                     # docs/performance.md
    python benchmarks/bench_step.py --shape medium --dtype bfloat16 --pairs 8 \\
        --policy-length 1024 --judge-length 2048                           # one GPU
"""

from __future__ import annotations

import argparse
import sys

from megatron_scir.config.choices import Dtype, TransformerImpl, choices
from megatron_scir.testing.step_bench import (
    LENGTHS,
    LOSS_TOLERANCE,
    MODES,
    SHAPES,
    StepBenchOptions,
    loss_summary_line,
    run_step_benchmark,
    tables,
)


def parse_args(argv: list[str] | None) -> StepBenchOptions:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--dtype", choices=choices(Dtype), default=Dtype.FLOAT32)
    parser.add_argument("--pairs", type=int, default=2, help="k, pairs per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=1, help="M per step")
    parser.add_argument("--policy-length", type=int, default=128, help="prompt + response")
    parser.add_argument("--judge-length", type=int, default=256)
    parser.add_argument(
        "--lengths",
        choices=LENGTHS,
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
    try:
        return StepBenchOptions(**vars(args))
    except ValueError as error:
        parser.error(str(error))


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    result = run_step_benchmark(options, on_ready=lambda header: print(header, flush=True))
    print(tables(result))
    print(f"\n{loss_summary_line(result)}")
    if not result.passed:
        print(f"FAIL: the losses differ by more than {LOSS_TOLERANCE} in float32", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
