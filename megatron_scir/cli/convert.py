"""``scir convert``: Hugging Face ↔ Megatron-Core checkpoints (Llama, Mistral, Qwen2, Qwen3).

    scir convert hf-to-mcore --hf-dir DIR --out CKPT [--tp N --pp M] [--config PRESET] [a.b=c ...]
    scir convert mcore-to-hf --ckpt CKPT --out DIR [--dtype bf16|fp16|fp32]

Both run as one CPU process by default (a gloo world of one). ``hf-to-mcore`` also runs under
``torchrun --nproc-per-node TP×PP -m megatron_scir.cli convert hf-to-mcore ...`` to convert at the
target layout, each rank holding its shard only; the command owns that parallel world. The
model shape comes from the HF config.json (import) or the checkpoint metadata (export).
Only the standard library and the config's choice enums are imported here; the work is imported
inside :func:`run`.
"""

from __future__ import annotations

import argparse
import os

from megatron_scir.config import load_config
from megatron_scir.config.arguments import add_config_arguments
from megatron_scir.config.choices import DTYPE_ALIASES

_SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _size(text: str) -> int:
    """``5GB`` / ``500MiB`` / ``1000000`` → bytes."""
    upper = text.strip().upper()
    for unit, factor in _SIZE_UNITS.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * factor)
    return int(upper)


def add_subcommands(parser: argparse.ArgumentParser) -> None:
    """Add ``hf-to-mcore`` and ``mcore-to-hf`` to ``parser`` (``scir convert`` or standalone)."""
    sub = parser.add_subparsers(dest="convert_command", required=True)
    imp = sub.add_parser("hf-to-mcore", help="Hugging Face folder → Megatron dist checkpoint")
    imp.add_argument(
        "--hf-dir", required=True, help="HF Llama/Mistral/Qwen folder (config, safetensors)"
    )
    imp.add_argument("--out", required=True, help="checkpoint directory to create")
    imp.add_argument("--tp", type=int, help="target tensor-parallel size (default: the config's)")
    imp.add_argument("--pp", type=int, help="target pipeline-parallel size (default: the config's)")
    exp = sub.add_parser("mcore-to-hf", help="Megatron dist checkpoint → Hugging Face folder")
    exp.add_argument("--ckpt", required=True, help="megatron-scir, Megatron-LM or NeMo 2 ckpt")
    exp.add_argument("--out", required=True, help="Hugging Face folder to create")
    exp.add_argument(
        "--dtype", choices=sorted(DTYPE_ALIASES), help="weights dtype (default: the ckpt's)"
    )
    exp.add_argument("--max-shard-size", type=_size, default="5GB", help="largest shard (5GB)")
    for command, config_help in (
        (imp, "preset or YAML for everything but the model shape (default: the schema defaults)"),
        (exp, "model config, only for checkpoints without megatron-scir metadata"),
    ):
        command.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_config_arguments(command, default=None, help=config_help)
        command.set_defaults(func=run)


def register(subparsers) -> None:
    """Add the ``convert`` command to the ``scir`` parser's subparsers."""
    parser = subparsers.add_parser(
        "convert", help="Hugging Face ↔ Megatron-Core checkpoints (Llama/Mistral/Qwen2/Qwen3)"
    )
    add_subcommands(parser)


def _hf_to_mcore(args: argparse.Namespace) -> None:
    from megatron_scir.convert.hf_config import config_from_hf  # lazy: keeps `scir --help` instant
    from megatron_scir.convert.hf_to_mcore import (  # lazy: as above
        check_hf_model,
        conversion_layout,
        convert_hf_to_mcore,
    )
    from megatron_scir.parallel.runtime import parallel_world  # lazy: as above
    from megatron_scir.parallel.state import launched_world_size  # lazy: as above

    overrides = list(args.overrides)
    if args.tp is not None:
        overrides.append(f"parallel.tensor_model_parallel_size={args.tp}")
    if args.pp is not None:
        overrides.append(f"parallel.pipeline_model_parallel_size={args.pp}")
    cfg = config_from_hf(args.hf_dir, args.config, overrides)
    check_hf_model(args.hf_dir, cfg.model)  # refusals before any process group or file
    work = conversion_layout(cfg, launched_world_size())
    with parallel_world(work.parallel, seed=cfg.train.seed) as runtime:
        out = convert_hf_to_mcore(
            runtime, args.hf_dir, args.out, cfg, progress=not args.no_progress
        )
        if runtime.is_rank_zero:
            p = cfg.parallel
            print(
                f"wrote {out} for TP={p.tensor_model_parallel_size} "
                f"PP={p.pipeline_model_parallel_size} (any layout can load it)"
            )


def _mcore_to_hf(args: argparse.Namespace) -> None:
    from megatron_scir.convert.errors import ConversionError  # lazy: keeps `scir --help` instant
    from megatron_scir.convert.mcore_to_hf import export_to_hf  # lazy: as above

    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ConversionError(
            "mcore-to-hf reads the checkpoint layer by layer in one process: run it without "
            "torchrun"
        )
    cfg = load_config(args.config, args.overrides) if args.config or args.overrides else None
    out = export_to_hf(
        args.ckpt,
        args.out,
        dtype=args.dtype,
        cfg=cfg,
        max_shard_bytes=args.max_shard_size,
        progress=not args.no_progress,
    )
    print(f"wrote {out}")


def run(args: argparse.Namespace) -> int:
    """Run ``scir convert <hf-to-mcore|mcore-to-hf>``; returns the exit status."""
    if args.convert_command == "hf-to-mcore":
        _hf_to_mcore(args)
    else:
        _mcore_to_hf(args)  # reads the checkpoint alone: no process group
    return 0
