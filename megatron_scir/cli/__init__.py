"""``scir``: the command-line entry points, the top layer. Parse → dispatch to one module per
command; each command owns its parallel world and calls the library packages.

    scir config --config PRESET_OR_YAML [a.b=c ++a.b=c ...]    print the resolved config
    scir convert hf-to-mcore|mcore-to-hf ...                     Hugging Face ↔ Megatron checkpoints
    scir generate --config ... --ckpt CKPT --prompts P --out O   N responses per prompt
    scir sft --config ... [--resume]                             the seed SFT stage
    scir train --config ... --pairs P [--resume]                 SCIR / DPO / SRLM training
    scir iterate --config ... [a.b=c ...]                        the self-rewarding loop
    scir evaluate --config ... --ckpt M --pairs P | --prompts P  reward-model accuracy, answers
    scir demo [--full]                                           the CPU study SCIR vs SRLM
    scir plan --config ... --nodes N [--json]                    per-GPU memory (no GPU needed)
    scir verify CKPT                                             check a checkpoint's file hashes

Also ``python -m megatron_scir.cli <command>`` (under ``torchrun -m`` or ``srun``). Command
modules import only the standard library at import time, so ``scir --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from megatron_scir.config import config_to_yaml, list_presets, load_config
from megatron_scir.config.arguments import add_config_arguments, run_command

# subcommands registered by their own packages: module with register(subparsers)
COMMAND_MODULES = (
    "megatron_scir.cli.convert",
    "megatron_scir.cli.generate",
    "megatron_scir.cli.train",
    "megatron_scir.cli.iterate",
    "megatron_scir.cli.demo",
    "megatron_scir.cli.plan",
    "megatron_scir.cli.verify",
)


def _run_config(args: argparse.Namespace) -> int:
    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    print(config_to_yaml(load_config(args.config, args.overrides)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scir", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    config = sub.add_parser("config", help="print the resolved configuration as YAML")
    add_config_arguments(config)
    config.add_argument("--list-presets", action="store_true", help="list the shipped presets")
    config.set_defaults(func=_run_config)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _quiet_megatron_notices() -> None:
    """Megatron-Core warns at import about missing apex/TE and the GPTModel deprecation; in a
    CLI run those are noise (the TE/FP8 requirement is enforced with its own error)."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"megatron\.core")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.distributed")
    # torch_dist checkpoints on CPU: the "single process" and "argument order" notices of
    # torch.distributed.checkpoint, and ShardedTensor's deprecation (Megatron still uses it)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.distributed\.checkp")
    warnings.filterwarnings("ignore", message=r".*ShardedTensor", category=FutureWarning)
    logging.getLogger("megatron.core.models.gpt.gpt_model").setLevel(logging.ERROR)
    # "No CUDA runtime is found" on CPU, and a once-per-process note about Megatron's own
    # async-save path (megatron-scir saves synchronously)
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    logging.getLogger("megatron.core.dist_checkpointing.strategies.torch").setLevel(logging.ERROR)
    # what shape each input's rows were read as (messages, preference rows), one line per file
    reading = logging.getLogger("megatron_scir.data.jsonl")
    if not reading.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        reading.addHandler(handler)
        reading.setLevel(logging.INFO)
        reading.propagate = False


def main(argv: list[str] | None = None) -> int:
    _quiet_megatron_notices()
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
