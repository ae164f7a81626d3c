"""``scir sft`` and ``scir train``: the seed SFT stage and SCIR/DPO/SRLM training on pairs.

    scir sft --config PRESET [--ckpt M0 | --hf-dir HF] [--resume] data.seed_sft=... [a.b=c ...]
    scir train --config PRESET --pairs pairs.jsonl [--ckpt M_t] [--resume] scir.mode=scir ...
    torchrun --nproc-per-node 8 -m megatron_scir.cli train --config llama3_8b --pairs P ...

Both write checkpoints under ``checkpoint.save`` (``step_NNNNNNN``) and metrics under
``logging.log_dir`` (default: ``<checkpoint.save>/logs``). ``--resume`` continues from the newest
complete checkpoint there. SIGTERM / SIGUSR1 (Slurm's preemption and time-limit warnings)
finish the current step, save, and exit with status 75 (``EXIT_PREEMPTED``): requeue and rerun
the same command with ``--resume``.

``scir train`` on pairs without reference log-probs first runs the reference pass with the
starting weights M_t into ``<checkpoint.save>/pairs.ref.jsonl`` (skipped when present and valid
for the same inputs), and trains on that file; pairs that already carry ``ref_logps_1/2`` are
trained on as they are. The job itself: :func:`megatron_scir.recipe.jobs.train_job`.
"""

from __future__ import annotations

import argparse

from megatron_scir.config.arguments import JOB_PRESETS_HELP, add_config_arguments

SFT_HELP = "the seed SFT stage: instruction + judge data (SRLM's IFT + EFT)"
TRAIN_HELP = "train on pairs: scir.mode=scir (default), dpo or srlm"


def register(subparsers) -> None:
    """Add ``sft`` and ``train`` to the ``scir`` sub-commands."""
    for name, help_text in (("sft", SFT_HELP), ("train", TRAIN_HELP)):
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == "train":
            parser.add_argument("--pairs", required=True, help="pairs JSONL with ref_logps")
        source = parser.add_mutually_exclusive_group()
        source.add_argument("--ckpt", help="weights to start from (default: checkpoint.load)")
        source.add_argument("--hf-dir", help="Hugging Face Llama/Mistral/Qwen folder to start from")
        parser.add_argument(
            "--resume", action="store_true", help="continue from the newest checkpoint"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_config_arguments(parser, default=None, help=JOB_PRESETS_HELP)
        parser.set_defaults(func=run, stage=name)


def run(args: argparse.Namespace) -> int:
    """Run ``sft`` or ``train``; 0 when done, ``EXIT_PREEMPTED`` when stopped by a signal."""
    from megatron_scir.recipe.jobs import train_job  # lazy: keeps `scir --help` instant
    from megatron_scir.training.signals import EXIT_PREEMPTED  # lazy: as above

    result = train_job(
        args.stage,
        args.config,
        args.overrides,
        pairs=getattr(args, "pairs", None),
        ckpt=args.ckpt,
        hf_dir=args.hf_dir,
        resume=args.resume,
        progress=False if args.no_progress else None,
    )
    return EXIT_PREEMPTED if result.preempted else 0
