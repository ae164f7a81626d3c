"""``scir iterate`` (the self-rewarding loop) and ``scir evaluate`` (reward-model accuracy and
greedy answers).

    scir iterate --config PRESET [--hf-dir HF] iteration.run_dir=runs/x data.prompts=P ...
    torchrun --nproc-per-node 8 -m megatron_scir.cli iterate --config llama3_8b ...
    scir evaluate --config PRESET --ckpt M [--ref-ckpt R] --pairs labelled.jsonl [--out-dir D]
    scir evaluate --config PRESET --ckpt M --prompts P --out answers.jsonl [--grader mod:fn]

``scir iterate`` runs every stage in ``iteration.run_dir`` and continues a rerun at the first
unfinished stage; SIGTERM/SIGUSR1 during training save and exit with 75 (requeue and rerun the
same command). See :mod:`megatron_scir.iteration.driver`; the jobs themselves:
:mod:`megatron_scir.iteration.job`.
"""

from __future__ import annotations

import argparse

from megatron_scir.config.arguments import JOB_PRESETS_HELP, add_config_arguments, log_to_stderr

ITERATE_HELP = "self-rewarding iterations: seed SFT, then generate → pairs → reference → train"
EVALUATE_HELP = "reward-model accuracy on labelled pairs, or greedy answers for a grader"


def register(subparsers) -> None:
    """Add ``iterate`` and ``evaluate`` to the ``scir`` sub-commands."""
    parser = subparsers.add_parser("iterate", help=ITERATE_HELP, description=ITERATE_HELP)
    parser.add_argument("--hf-dir", help="start from this Hugging Face folder (M_0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, default=None, help=JOB_PRESETS_HELP)
    parser.set_defaults(func=run_iterate)

    parser = subparsers.add_parser("evaluate", help=EVALUATE_HELP, description=EVALUATE_HELP)
    parser.add_argument("--ckpt", required=True, help="the model to evaluate")
    parser.add_argument("--ref-ckpt", help="reference model of the implicit reward (M_t)")
    parser.add_argument("--pairs", help="labelled pairs JSONL (label 1 or 2)")
    parser.add_argument(
        "--out-dir", help="work files of --pairs (default: <ckpt>/../eval/<ckpt name>)"
    )
    parser.add_argument("--prompts", help="prompts JSONL for greedy answers")
    parser.add_argument("--out", help="greedy answers JSONL (with --prompts)")
    parser.add_argument("--grader", help="module:function scoring the answers (with --prompts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, default=None, help=JOB_PRESETS_HELP)
    parser.set_defaults(func=run_evaluate)


def run_iterate(args: argparse.Namespace) -> int:
    """0 when every iteration is done, 75 when training was stopped by a signal."""
    from megatron_scir.iteration import Preempted  # lazy: keeps `scir --help` instant
    from megatron_scir.iteration.job import iterate  # lazy: as above
    from megatron_scir.training.signals import EXIT_PREEMPTED  # lazy: as above

    log_to_stderr()  # the stage lines: "iteration 1: generate", ...
    try:
        iterate(args.config, args.overrides, hf_dir=args.hf_dir, progress=_progress(args))
    except Preempted as stop:
        print(f"scir iterate: {stop}; rerun the same command to continue", flush=True)
        return EXIT_PREEMPTED
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from megatron_scir.iteration.job import evaluate_job  # lazy: keeps `scir --help` instant

    log_to_stderr()  # what is recomputed, which settings come from the checkpoint
    files = {k: getattr(args, k) for k in ("ckpt", "ref_ckpt", "pairs", "out_dir", "prompts")}
    evaluate_job(
        args.config, args.overrides, out=args.out, grader=args.grader,
        progress=_progress(args), **files,
    )
    return 0


def _progress(args) -> bool | None:
    return False if args.no_progress else None
