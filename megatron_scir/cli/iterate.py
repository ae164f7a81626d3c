"""``scir iterate`` (the self-rewarding loop) and ``scir evaluate`` (reward-model accuracy and
greedy answers).

    scir iterate --config PRESET [--hf-dir HF] iteration.run_dir=runs/x data.prompts=P ...
    torchrun --nproc-per-node 8 -m megatron_scir.cli iterate --config llama3_8b ...
    scir evaluate --config PRESET --ckpt M [--ref-ckpt R] --pairs labelled.jsonl [--out-dir D]
    scir evaluate --config PRESET --ckpt M --prompts P --out answers.jsonl [--grader mod:fn]

``scir iterate`` runs every stage in ``iteration.run_dir`` and continues a rerun at the first
unfinished stage; SIGTERM/SIGUSR1 during training save and exit with 75 (requeue and rerun the
same command). See :mod:`megatron_scir.iteration.driver`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from megatron_scir.config.arguments import add_config_arguments

ITERATE_HELP = "self-rewarding iterations: seed SFT, then generate → pairs → reference → train"
EVALUATE_HELP = "reward-model accuracy on labelled pairs, or greedy answers for a grader"


def register(subparsers) -> None:
    """Add ``iterate`` and ``evaluate`` to the ``scir`` sub-commands."""
    parser = subparsers.add_parser("iterate", help=ITERATE_HELP, description=ITERATE_HELP)
    parser.add_argument("--hf-dir", help="start from this Hugging Face folder (M_0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    parser.set_defaults(func=run_iterate)

    parser = subparsers.add_parser("evaluate", help=EVALUATE_HELP, description=EVALUATE_HELP)
    parser.add_argument("--ckpt", required=True, help="the model to evaluate")
    parser.add_argument("--ref-ckpt", help="reference model of the implicit reward (M_t)")
    parser.add_argument("--pairs", help="labelled pairs JSONL (label 1 or 2)")
    parser.add_argument("--out-dir", help="work files of --pairs (default: <ckpt>/../eval)")
    parser.add_argument("--prompts", help="prompts JSONL for greedy answers")
    parser.add_argument("--out", help="greedy answers JSONL (with --prompts)")
    parser.add_argument("--grader", help="module:function scoring the answers (with --prompts)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_config_arguments(parser)
    parser.set_defaults(func=run_evaluate)


def run_iterate(args: argparse.Namespace) -> int:
    """0 when every iteration is done, 75 when training was stopped by a signal."""
    from megatron_scir.cli.generate import log_to_stderr
    from megatron_scir.iteration import Preempted
    from megatron_scir.training.signals import EXIT_PREEMPTED

    log_to_stderr()  # the stage lines: "iteration 1: generate", ...
    try:
        iterate(args.config, args.overrides, hf_dir=args.hf_dir, progress=_progress(args))
    except Preempted as stop:
        print(f"scir iterate: {stop}; rerun the same command to continue", flush=True)
        return EXIT_PREEMPTED
    return 0


def iterate(config, overrides, *, hf_dir=None, progress=None, report=True):
    """Load and check the config, enter the world, run the loop; the records on every rank."""
    from megatron_scir.iteration import run_iterations
    from megatron_scir.parallel.runtime import parallel_world

    cfg, tokenizer = _setup(config, overrides, hf_dir=hf_dir)
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        return run_iterations(
            runtime, cfg, tokenizer, hf_dir=hf_dir, progress=progress, report=report
        )


def run_evaluate(args: argparse.Namespace) -> int:
    from megatron_scir.config import ConfigError
    from megatron_scir.iteration import grade_answers, greedy_answers, reward_accuracy
    from megatron_scir.parallel.runtime import parallel_world

    if not args.pairs and not args.prompts:
        raise ConfigError("scir evaluate needs --pairs (labelled) and/or --prompts with --out")
    if args.prompts and not args.out:
        raise ConfigError("scir evaluate --prompts needs --out answers.jsonl")
    cfg, tokenizer = _setup(args.config, args.overrides, ckpt=args.ckpt)
    report: dict = {"ckpt": args.ckpt, "ref_ckpt": args.ref_ckpt}
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        if args.pairs:
            work = Path(args.out_dir or Path(args.ckpt).resolve().parent / "eval")
            scores = reward_accuracy(
                runtime, cfg, tokenizer, args.pairs,
                policy_ckpt=args.ckpt, ref_ckpt=args.ref_ckpt, work_dir=work,
            )
            report.update(pairs=args.pairs, **scores.metrics())
        if args.prompts:
            greedy_answers(
                runtime, cfg, tokenizer, args.prompts, args.out, ckpt=args.ckpt,
                progress=_progress(args),
            )
            report["answers"] = args.out
            grader = args.grader or cfg.iteration.grader
            if grader:
                score = runtime.on_rank_zero(lambda: grade_answers(args.out, grader))
                report.update(grader=grader, oracle_accuracy=score.oracle_accuracy)
        if runtime.is_rank_zero:
            print(json.dumps(report, indent=1), flush=True)
    return 0


def _setup(config, overrides, *, hf_dir=None, ckpt=None):
    """The validated config (model section from the checkpoint or HF folder) and tokenizer."""
    from megatron_scir.cli.generate import resolve_config
    from megatron_scir.config import load_config, validate
    from megatron_scir.config.validate import GENERATION, TRAINING
    from megatron_scir.data import build_tokenizer, check_tokenizer_fits_model

    layout = load_config(config, overrides).parallel
    # the model section from the HF folder or checkpoint (--ckpt or checkpoint.load); back from
    # the generation layout resolve_config returns to the training layout
    cfg = resolve_config(config, overrides, hf_dir=hf_dir, ckpt=ckpt)
    cfg = dataclasses.replace(cfg, parallel=layout)
    validate(cfg, uses=(GENERATION, TRAINING))
    tokenizer = build_tokenizer(cfg.data)
    check_tokenizer_fits_model(tokenizer, cfg.model)
    return cfg, tokenizer


def _progress(args) -> bool | None:
    return False if args.no_progress else None
