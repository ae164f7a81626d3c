"""``scir``: the command-line entry point. Parse → dispatch; each command lives with its package.

    scir config --config PRESET_OR_YAML [a.b=c ++a.b=c ...]    print the resolved config
    scir convert hf-to-mcore|mcore-to-hf ...                     Hugging Face ↔ Megatron checkpoints
    scir generate --config ... --ckpt CKPT --prompts P --out O   N responses per prompt

Command modules import only the standard library at import time, so ``scir --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import warnings

from megatron_scir.config import ConfigError

# subcommands registered by their own packages: module with register(subparsers)
COMMAND_MODULES = (
    "megatron_scir.convert.command",
    "megatron_scir.generation.command",
)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config PRESET_OR_YAML`` plus trailing ``a.b=c`` overrides (shared by every command)."""
    parser.add_argument(
        "--config",
        default="tiny",
        help="preset name (tiny, mistral_7b, llama3_8b, llama3_70b_fp8) or a YAML path",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="NeMo/Hydra-style overrides: model.num_layers=4 ++scir.beta=0.05",
    )


def _run_config(args: argparse.Namespace) -> int:
    from megatron_scir.config import config_to_yaml, list_presets, load_config

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
    logging.getLogger("megatron.core.models.gpt.gpt_model").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    from megatron_scir.data.errors import DataError

    _quiet_megatron_notices()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ConfigError, DataError) as err:
        # user-facing problems are worded as what to change: no traceback
        print(f"scir {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
