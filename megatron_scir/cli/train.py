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
starting weights M_t (``megatron_scir.training.reference``) into
``<checkpoint.save>/pairs.ref.jsonl`` (skipped when present and valid for the same inputs), and
trains on that file; pairs that already carry ``ref_logps_1/2`` are trained on as they are.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from megatron_scir.config.arguments import add_config_arguments

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
        source.add_argument("--hf-dir", help="Hugging Face Llama/Mistral folder to start from")
        parser.add_argument(
            "--resume", action="store_true", help="continue from the newest checkpoint"
        )
        parser.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_config_arguments(parser)
        parser.set_defaults(func=run, stage=name)


def run(args: argparse.Namespace) -> int:
    """Run ``sft`` or ``train``; 0 when done, ``EXIT_PREEMPTED`` when stopped by a signal."""
    from megatron_scir.training.signals import EXIT_PREEMPTED

    result = run_training(
        args.stage,
        args.config,
        args.overrides,
        pairs=getattr(args, "pairs", None),
        ckpt=args.ckpt,
        hf_dir=args.hf_dir,
        resume=args.resume,
        progress=False if args.no_progress else None,
    )
    if result.preempted:
        return EXIT_PREEMPTED
    return 0


def run_training(
    stage: str,
    config: str | None,
    overrides,
    *,
    pairs: str | os.PathLike | None = None,
    ckpt: str | None = None,
    hf_dir: str | None = None,
    resume: bool = False,
    progress: bool | None = None,
):
    """One training job top to bottom: config → data → world → model → train → result."""
    from megatron_scir.checkpoint import latest_checkpoint
    from megatron_scir.config import ConfigError, load_config, validate
    from megatron_scir.config.validate import TRAINING
    from megatron_scir.data import build_tokenizer, check_tokenizer_fits_model
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.training.trainer import train

    cfg = load_config(config, overrides)
    validate(cfg, uses=(TRAINING,))
    if stage == "sft":
        from megatron_scir.training.sft_step import sft_stage_config

        cfg = sft_stage_config(cfg)
    if cfg.checkpoint.save is None:
        raise ConfigError("training needs checkpoint.save=DIR (checkpoints and --resume)")
    save_dir = Path(cfg.checkpoint.save)
    log_dir = Path(cfg.logging.log_dir or save_dir / "logs")
    tokenizer = build_tokenizer(cfg.data)
    check_tokenizer_fits_model(tokenizer, cfg.model)
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        source = ckpt or cfg.checkpoint.load
        resuming = resume and latest_checkpoint(save_dir) is not None
        chunks = _initial_chunks(cfg, source, hf_dir, resuming)
        if stage == "train":
            pairs = _reference_pairs(
                runtime,
                cfg,
                tokenizer,
                chunks,
                pairs,
                save_dir,
                resuming,
                model_id=_model_id(cfg, source, hf_dir),
            )
        data, forward_step = _stage(stage, runtime, cfg, tokenizer, pairs)
        result = train(
            runtime,
            cfg,
            chunks,
            data,
            forward_step,
            save_dir=save_dir,
            log_dir=log_dir,
            resume=resume,
            progress=progress,
        )
        if runtime.is_rank_zero:
            print(_summary(stage, result), flush=True)
        return result


def _summary(stage: str, result) -> str:
    """The final line: steps, skips, the last loss, where the weights are."""
    s = result.state
    loss = result.metrics.get("loss/total", float("nan"))
    how = "stopped by a signal at" if result.preempted else "finished"
    return (
        f"scir {stage}: {how} step {s.step} ({s.skipped_steps} skipped), last loss/total "
        f"{loss:.4f}, checkpoint {result.checkpoint}"
    )


def _stage(stage, runtime, cfg, tokenizer, pairs):
    """The DataModule (set up) and forward step of ``sft`` or ``train``."""
    from megatron_scir.data import ScirDataModule, SftDataModule
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.sft_step import make_sft_forward_step

    ranks = dict(dp_rank=runtime.dp_rank, dp_size=runtime.dp_size)
    if stage == "sft":
        data = SftDataModule(cfg, tokenizer, **ranks)
        data.setup("fit")
        return data, make_sft_forward_step(cfg, tp_group=runtime.tp_group)
    data = ScirDataModule(cfg, tokenizer, train_path=pairs, **ranks)
    data.setup("fit")
    step = make_forward_step(cfg, data.verdict_token_ids, tp_group=runtime.tp_group)
    return data, step


def _initial_chunks(cfg, ckpt, hf_dir, resuming):
    """This rank's chunks: random init, or the weights of ``ckpt`` / ``hf_dir`` (a resumed run
    loads its own checkpoint in the trainer instead)."""
    from megatron_scir.cli.generate import load_model_chunks
    from megatron_scir.models import build_model_chunks

    if resuming or (ckpt is None and hf_dir is None):
        return build_model_chunks(cfg)
    return load_model_chunks(cfg, ckpt=ckpt, hf_dir=hf_dir)


def _model_id(cfg, ckpt, hf_dir) -> str:
    """What the reference file's hash knows the starting weights M_t by."""
    from megatron_scir.training.reference import checkpoint_identity

    if ckpt is not None:
        return checkpoint_identity(ckpt)
    if hf_dir is not None:
        return f"hf:{Path(hf_dir).resolve()}"
    return f"random-init:seed={cfg.train.seed}"


def _reference_pairs(runtime, cfg, tokenizer, chunks, pairs, save_dir, resuming, *, model_id):
    """``pairs`` if they carry reference log-probs, else the reference pass's file with M_t."""
    from megatron_scir.config import ConfigError
    from megatron_scir.training.reference import run_reference_pass

    if _first_record_has_ref_logps(pairs):  # the DataModule refuses a file that mixes both
        return pairs
    out = save_dir / "pairs.ref.jsonl"
    if resuming:  # the weights are no longer M_t: the file must be the one written at the start
        if not out.is_file():
            raise ConfigError(
                f"resuming on pairs without reference log-probs needs {out}, written before the "
                "first step: rerun without --resume (or from the M_t checkpoint)"
            )
        return out
    summary = run_reference_pass(runtime, chunks, cfg, tokenizer, pairs, out, inputs_id=model_id)
    if runtime.is_rank_zero:
        print(f"reference pass: {summary.num_pairs} pairs -> {out}", flush=True)
    return out


def _first_record_has_ref_logps(pairs) -> bool:
    """Whether the pairs file's first record carries ``ref_logps_1`` (a file that cannot be
    read says False: the reference pass then reports it with its file and line)."""
    import json

    try:
        with open(pairs, encoding="utf-8") as fh:
            first = next((line for line in fh if line.strip()), "")
        return json.loads(first).get("ref_logps_1") is not None
    except (OSError, ValueError, AttributeError):
        return False
