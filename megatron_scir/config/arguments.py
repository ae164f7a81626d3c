"""What every ``scir`` command shares on the command line: ``--config`` + overrides, and how a
:class:`~megatron_scir.config.errors.UserError` is reported (``<prog>: error: ...``, exit 2, no
traceback). Standard library only, so ``scir --help`` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from megatron_scir.config.errors import UserError

PRESETS_HELP = "preset name (tiny, chat, mistral_7b, llama3_8b, llama3_70b_fp8) or a YAML path"
JOB_PRESETS_HELP = (
    f"{PRESETS_HELP}; default: chat for a pretrained model (--hf-dir, or a checkpoint that "
    "carries a Hugging Face tokenizer), tiny otherwise"
)


def add_config_arguments(
    parser: argparse.ArgumentParser, *, default: str | None = "tiny", help: str = PRESETS_HELP
) -> None:
    """``--config PRESET_OR_YAML`` plus trailing ``a.b=c`` / ``++a.b=c`` overrides."""
    parser.add_argument("--config", default=default, help=help)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="NeMo/Hydra-style overrides: model.num_layers=4 ++scir.beta=0.05",
    )
    parser.set_defaults(prog=parser.prog)


def run_command(func: Callable[[argparse.Namespace], int | None], args: argparse.Namespace) -> int:
    """Run a command; a user error becomes ``<prog>: error: <message>`` on stderr and status 2.

    Anything that is not a :class:`UserError` is a bug: it keeps its traceback.
    """
    try:
        return int(func(args) or 0)
    except UserError as err:
        prog = getattr(args, "prog", None) or "scir"
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2


def log_to_stderr() -> None:
    """Show megatron-scir's INFO lines (engine choice, checkpoint, stages) on stderr, unless
    the caller has set up logging."""
    import logging

    package = logging.getLogger("megatron_scir")
    if not logging.getLogger().handlers and not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
