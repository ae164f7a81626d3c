"""``scir generate``: N sampled responses per prompt from a Megatron checkpoint or an HF folder.

    scir generate --config PRESET_OR_YAML --ckpt CKPT --prompts prompts.jsonl \\
        --out generations.jsonl [a.b=c ++a.b=c ...]
    scir generate --config tiny --hf-dir HF_MODEL_DIR --prompts p.jsonl --out g.jsonl
    torchrun --nproc-per-node 8 -m megatron_scir.cli generate --config llama3_70b_fp8 \\
        --ckpt CKPT --prompts p.jsonl --out g.jsonl parallel.tensor_model_parallel_size=8

The job, top to bottom (config → prompts → tokenizer → world → model → generate), is
:func:`megatron_scir.recipe.jobs.generate_job`; library callers that already hold a world and a
model (the iteration driver) call :func:`megatron_scir.generation.generate` directly. Rerunning
the same command after an interruption continues where the output stops. Only the standard
library is imported at module level, so ``scir --help`` stays instant.
"""

from __future__ import annotations

import argparse

from megatron_scir.config.arguments import JOB_PRESETS_HELP, add_config_arguments, log_to_stderr

HELP = "sample generation.num_responses responses per prompt (resumable JSONL output)"


def register(subparsers) -> None:
    """Add ``generate`` to the ``scir`` sub-commands."""
    parser = subparsers.add_parser("generate", help=HELP, description=HELP)
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--ckpt", help="Megatron distributed checkpoint to sample from (default: checkpoint.load)"
    )
    source.add_argument(
        "--hf-dir",
        help="Hugging Face Llama/Mistral/Qwen folder, converted on load; its tokenizer is used "
        "unless data.tokenizer_path is set",
    )
    parser.add_argument("--prompts", required=True, help='JSONL of {"id", "prompt"} records')
    parser.add_argument(
        "--out", required=True, help="generations JSONL stream (an existing one is resumed)"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (logging.progress=false)"
    )
    add_config_arguments(parser, default=None, help=JOB_PRESETS_HELP)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``generate``; prints the summary line on global rank 0."""
    from megatron_scir.recipe.jobs import generate_job  # lazy: keeps `scir --help` instant

    log_to_stderr()
    stats = generate_job(
        args.config,
        args.overrides,
        prompts_path=args.prompts,
        out_path=args.out,
        ckpt=args.ckpt,
        hf_dir=args.hf_dir,
        progress=False if args.no_progress else None,
    )
    if stats is not None:
        print(stats.summary(), flush=True)
    return 0
