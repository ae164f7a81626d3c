"""``scir generate``: N sampled responses per prompt from a Megatron checkpoint or an HF folder.

    scir generate --config PRESET_OR_YAML --ckpt CKPT --prompts prompts.jsonl \\
        --out generations.jsonl [a.b=c ++a.b=c ...]
    scir generate --config tiny --hf-dir HF_MODEL_DIR --prompts p.jsonl --out g.jsonl
    torchrun --nproc-per-node 8 -m megatron_scir.generation.command --config llama3_70b_fp8 \\
        --ckpt CKPT --prompts p.jsonl --out g.jsonl parallel.tensor_model_parallel_size=8

Rerunning the same command after an interruption continues where the output stops. Only the
standard library is imported here, so ``scir --help`` stays instant; the work is in
:mod:`megatron_scir.generation.job`.
"""

from __future__ import annotations

import argparse
import sys

HELP = "sample generation.num_responses responses per prompt (resumable JSONL output)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``generate`` options (shared by ``scir generate`` and ``python -m``)."""
    parser.add_argument(
        "--config",
        default="tiny",
        help="preset name (tiny, mistral_7b, llama3_8b, llama3_70b_fp8) or a YAML path",
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--ckpt", help="Megatron distributed checkpoint to sample from (default: checkpoint.load)"
    )
    source.add_argument(
        "--hf-dir",
        help="Hugging Face Llama/Mistral folder, converted on load; its tokenizer is used "
        "unless data.tokenizer_path is set",
    )
    parser.add_argument("--prompts", required=True, help='JSONL of {"id", "prompt"} records')
    parser.add_argument(
        "--out", required=True, help="generations JSONL stream (an existing one is resumed)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logging.progress=false)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="NeMo/Hydra-style overrides: generation.num_responses=8 ++generation.seed=7",
    )


def register(subparsers) -> None:
    """Add ``generate`` to the ``scir`` sub-commands."""
    parser = subparsers.add_parser("generate", help=HELP, description=HELP)
    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``generate``; prints the summary line on global rank 0.

    Returns:
        0 on success, 2 for a problem with the inputs (message on stderr, no traceback).
    """
    from megatron_scir.config import ConfigError
    from megatron_scir.convert.errors import CheckpointError, ConversionError
    from megatron_scir.data import DataError
    from megatron_scir.generation.job import run_generation

    _log_to_stderr()
    try:
        stats = run_generation(
            args.config,
            args.overrides,
            prompts_path=args.prompts,
            out_path=args.out,
            ckpt=args.ckpt,
            hf_dir=args.hf_dir,
            progress=False if args.no_progress else None,
        )
    except (ConfigError, DataError, ConversionError, CheckpointError) as err:
        print(f"scir generate: error: {err}", file=sys.stderr)
        return 2
    if stats is not None:
        print(stats.summary(), flush=True)
    return 0


def _log_to_stderr() -> None:
    """Show megatron-scir's INFO lines (engine choice, checkpoint) unless logging is set up."""
    import logging

    package = logging.getLogger("megatron_scir")
    if not logging.getLogger().handlers and not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """``python -m megatron_scir.generation.command`` (also under torchrun)."""
    parser = argparse.ArgumentParser(prog="scir generate", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
