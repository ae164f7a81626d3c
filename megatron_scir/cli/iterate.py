"""``scir iterate`` (the self-rewarding loop), ``scir evaluate`` (reward-model accuracy and
greedy answers) and ``scir export-pairs`` (an iteration's pairs as a preference dataset).

    scir iterate --config PRESET [--hf-dir HF] iteration.run_dir=runs/x data.prompts=P ...
    torchrun --nproc-per-node 8 -m megatron_scir.cli iterate --config llama3_8b ...
    scir evaluate --config PRESET --ckpt M [--ref-ckpt R] --pairs labelled.jsonl [--out-dir D]
    scir evaluate --config PRESET --ckpt M --prompts P --out answers.jsonl [--grader mod:fn]
    scir export-pairs --config PRESET --run-dir runs/x --iteration 1 --out pairs.parquet

``scir iterate`` runs every stage in ``iteration.run_dir`` and continues a rerun at the first
unfinished stage; SIGTERM/SIGUSR1 during training save and exit with 75 (requeue and rerun the
same command). See :mod:`megatron_scir.iteration.driver`; the jobs themselves:
:mod:`megatron_scir.iteration.job`.
"""

from __future__ import annotations

import argparse

from megatron_scir.config.arguments import JOB_PRESETS_HELP, add_config_arguments, log_to_stderr
from megatron_scir.data.export import CHOSEN_BY

ITERATE_HELP = "self-rewarding iterations: seed SFT, then generate → pairs → reference → train"
EVALUATE_HELP = "reward-model accuracy on labelled pairs, or greedy answers for a grader"
EXPORT_HELP = (
    "pairs as a preference dataset (prompt/chosen/rejected message lists, Parquet or "
    "save_to_disk) with the judge's and the implicit reward's verdicts"
)


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
    parser.add_argument("--prompts", help="prompts (or AlpacaEval / MT-Bench questions, with "
                        "--format) for greedy answers")
    parser.add_argument("--out", help="the answers file (with --prompts)")
    parser.add_argument("--grader", help="module:function scoring the answers (with --prompts)")
    parser.add_argument(
        "--format", default="jsonl", choices=("jsonl", "alpaca_eval", "mt_bench"),
        help="answers file for --prompts: jsonl (this project's), alpaca_eval "
        "(model_outputs.json) or mt_bench (FastChat answer JSONL; every turn answered)",
    )
    parser.add_argument("--model-id", help="the generator / model_id in the answer file "
                        "(default: the checkpoint folder's name)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser, default=None, help=JOB_PRESETS_HELP)
    parser.set_defaults(func=run_evaluate)

    parser = subparsers.add_parser("export-pairs", help=EXPORT_HELP, description=EXPORT_HELP)
    parser.add_argument("--out", required=True, help="OUT.parquet, OUT.jsonl, OUT.json or a "
                        "folder (datasets save_to_disk)")
    parser.add_argument("--run-dir", help="a scir iterate run directory (with --iteration)")
    parser.add_argument("--iteration", type=int, help="its iteration t: pairs, M_t+1 and M_t")
    parser.add_argument("--pairs", help="pairs to export (any data source)")
    parser.add_argument("--ckpt", help="the model whose judge and implicit reward decide")
    parser.add_argument("--ref-ckpt", help="the implicit reward's reference (the model --ckpt "
                        "was trained from)")
    parser.add_argument("--chosen-by", choices=CHOSEN_BY, help="which response is chosen "
                        "(default: agreed with --ref-ckpt, else judge)")
    parser.add_argument("--out-dir", help="work files (default: <ckpt>/../eval/<ckpt name>)")
    add_config_arguments(parser, default=None, help=JOB_PRESETS_HELP)
    parser.set_defaults(func=run_export_pairs)


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
        progress=_progress(args), answer_format=args.format, model_id=args.model_id, **files,
    )
    return 0


def run_export_pairs(args: argparse.Namespace) -> int:
    from megatron_scir.iteration.job import export_pairs_job  # lazy: keeps `scir --help` instant

    log_to_stderr()
    export_pairs_job(
        args.config, args.overrides, out=args.out, pairs=args.pairs, ckpt=args.ckpt,
        ref_ckpt=args.ref_ckpt, run_dir=args.run_dir, iteration=args.iteration,
        chosen_by=args.chosen_by, out_dir=args.out_dir,
    )
    return 0


def _progress(args) -> bool | None:
    return False if args.no_progress else None
