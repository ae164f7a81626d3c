"""``scir plan``: will a config fit, per GPU, for training and for generation?

    scir plan --config llama3_70b_fp8 --nodes 4 [--gpus-per-node 8] [--gpu-memory-gb 80] \\
        [--headroom 0.1] [--overhead-gb 3] [--json] [a.b=c ++a.b=c ...]

Prints the layout, a GiB table (training: first and last pipeline stage; generation: its worst
stage), the largest ``train.micro_batch_size`` that fits and a one-line verdict with the changes
that would make a misfit fit. Torch-free and instant: it reads the config and the shape table
only (:mod:`megatron_scir.plan.memory` holds every formula and its source). Only the standard
library is imported at module level, so ``scir --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json

from megatron_scir.config import load_config
from megatron_scir.config.arguments import add_config_arguments

HELP = "per-GPU memory of training and generation for a config on N nodes (no GPU needed)"


def register(subparsers) -> None:
    """Add ``plan`` to the ``scir`` sub-commands."""
    parser = subparsers.add_parser("plan", help=HELP, description=HELP)
    parser.add_argument("--nodes", type=int, default=1, help="nodes (default 1)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument(
        "--gpu-memory-gb", type=float, default=80.0, help="memory per GPU in GiB (default 80)"
    )
    parser.add_argument(
        "--headroom",
        type=float,
        default=0.1,
        help="share of the GPU memory kept free (default 0.1: plan against 90 %%)",
    )
    parser.add_argument(
        "--overhead-gb",
        type=float,
        default=3.0,
        help="fixed per-GPU overhead in GiB: CUDA context, NCCL, fragmentation (default 3)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Plan ``args.config`` + overrides on the given cluster and print it (0 either way)."""
    from megatron_scir.plan import format_plan, plan_memory  # lazy: keeps `scir --help` instant

    cfg = load_config(args.config, args.overrides)
    plan = plan_memory(
        cfg,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        gpu_memory_gb=args.gpu_memory_gb,
        headroom=args.headroom,
        overhead_gb=args.overhead_gb,
    )
    if args.json:
        print(json.dumps({"config": args.config, **plan.to_dict()}, indent=2))
    else:
        print(f"config: {args.config} {' '.join(args.overrides)}".rstrip())
        print(format_plan(plan))
    return 0
