"""``scir generate``: N sampled responses per prompt from a Megatron checkpoint or an HF folder.

    scir generate --config PRESET_OR_YAML --ckpt CKPT --prompts prompts.jsonl \\
        --out generations.jsonl [a.b=c ++a.b=c ...]
    scir generate --config tiny --hf-dir HF_MODEL_DIR --prompts p.jsonl --out g.jsonl
    torchrun --nproc-per-node 8 -m megatron_scir.cli generate --config llama3_70b_fp8 \\
        --ckpt CKPT --prompts p.jsonl --out g.jsonl parallel.tensor_model_parallel_size=8

One job, top to bottom: config → prompts → tokenizer → world → model → generate. The command
owns the parallel world; library callers that already hold a world and a model (the iteration
driver between two training phases) call :func:`megatron_scir.generation.generate` directly.
Inputs are validated before any process group or model exists (a bad prompt file fails in a
second, not after loading 70B weights). Rerunning the same command after an interruption
continues where the output stops. Only the standard library is imported at module level, so
``scir --help`` stays instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from megatron_scir.config.arguments import add_config_arguments

if TYPE_CHECKING:
    import torch

    from megatron_scir.config import Config
    from megatron_scir.data import Tokenizer
    from megatron_scir.generation import GenerationStats

HELP = "sample generation.num_responses responses per prompt (resumable JSONL output)"
logger = logging.getLogger("megatron_scir.generation")


def register(subparsers) -> None:
    """Add ``generate`` to the ``scir`` sub-commands."""
    parser = subparsers.add_parser("generate", help=HELP, description=HELP)
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
    add_config_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``generate``; prints the summary line on global rank 0."""
    log_to_stderr()
    stats = run_generation(
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


def run_generation(
    config: str,
    overrides: Sequence[str],
    *,
    prompts_path: str | os.PathLike,
    out_path: str | os.PathLike,
    ckpt: str | None = None,
    hf_dir: str | None = None,
    progress: bool | None = None,
) -> GenerationStats | None:
    """Sample ``generation.num_responses`` responses per prompt into ``out_path``.

    Enters :func:`megatron_scir.parallel.runtime.parallel_world` (from torchrun/Slurm env vars,
    or a world of one; a world the caller already set up is kept) for the job's duration.

    Args:
        config: Preset name or YAML path.
        overrides: ``a.b=c`` overrides.
        prompts_path: JSONL of prompt records (``data.on_bad_record`` applies).
        out_path: The generations stream (resumed when it exists).
        ckpt: Megatron distributed checkpoint (default ``checkpoint.load``).
        hf_dir: Hugging Face folder instead of ``ckpt``; its ``config.json`` gives the model
            section and its tokenizer is used unless ``data.tokenizer_path`` is set.
        progress: Progress bar on rank 0 (default ``logging.progress``).

    Returns:
        The run's counts on global rank 0, None on the other ranks.
    """
    from megatron_scir.config import ConfigError
    from megatron_scir.data import build_tokenizer, check_tokenizer_fits_model, read_records
    from megatron_scir.generation import generate
    from megatron_scir.parallel.runtime import parallel_world

    cfg = resolve_config(config, overrides, hf_dir=hf_dir, ckpt=ckpt)
    if hf_dir is None:
        ckpt = ckpt or cfg.checkpoint.load
        if not ckpt:
            raise ConfigError("nothing to sample from: pass --ckpt DIR (or checkpoint.load=DIR)")
    prompts, _ = read_records(prompts_path, "prompts", on_bad_record=cfg.data.on_bad_record)
    tokenizer = build_tokenizer(cfg.data)
    check_tokenizer_fits_model(tokenizer, cfg.model)
    _check_generation_settings(cfg, tokenizer)
    with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
        chunks = load_model_chunks(cfg, ckpt=ckpt, hf_dir=hf_dir, log=runtime.is_rank_zero)
        stats = generate(runtime, chunks, tokenizer, prompts, out_path, cfg, progress=progress)
        return stats if runtime.is_rank_zero else None


def resolve_config(
    config: str, overrides: Sequence[str], *, hf_dir: str | None, ckpt: str | None = None
) -> Config:
    """The job's config in the generation layout; the model section comes from ``hf_dir``'s
    config.json, or from the checkpoint's metadata (``ckpt`` or ``checkpoint.load``), so the
    shape never has to be repeated on the command line."""
    from megatron_scir.config import load_config, validate
    from megatron_scir.config.validate import GENERATION
    from megatron_scir.generation import generation_layout

    if hf_dir is not None:
        from megatron_scir.convert import config_from_hf

        cfg = config_from_hf(hf_dir, config, overrides)
        if cfg.data.tokenizer_path is None:
            data = dataclasses.replace(cfg.data, tokenizer_type="hf", tokenizer_path=str(hf_dir))
            cfg = dataclasses.replace(cfg, data=data)
    else:
        cfg = load_config(config, overrides)
        if ckpt or cfg.checkpoint.load:
            from megatron_scir.checkpoint import (
                config_for_checkpoint,
                tokenizer_config_from_checkpoint,
            )

            cfg = config_for_checkpoint(ckpt or cfg.checkpoint.load, config, overrides)
            if cfg.data.tokenizer_path is None:
                cfg = tokenizer_config_from_checkpoint(cfg, ckpt or cfg.checkpoint.load)
    cfg = dataclasses.replace(cfg, parallel=generation_layout(cfg.parallel))
    validate(cfg, uses=(GENERATION,))
    return cfg


def _check_generation_settings(cfg: Config, tokenizer: Tokenizer) -> None:
    """Fail on sampling, prompt-budget and engine settings before the model is loaded."""
    from megatron_scir.generation import PromptEncoder, SamplingSettings
    from megatron_scir.generation.mcore_inference import select_engine

    SamplingSettings.from_config(cfg.generation)
    PromptEncoder.from_config(cfg, tokenizer)
    select_engine(cfg.generation.engine)


def load_model_chunks(
    cfg: Config, *, ckpt: str | None = None, hf_dir: str | None = None, log: bool = False
) -> list[torch.nn.Module]:
    """This rank's model chunks with the weights of ``hf_dir`` (converted) or ``ckpt``.

    Collective; the parallel world of ``cfg.parallel`` must be entered.
    """
    from megatron_scir.models import build_model_chunks

    chunks = build_model_chunks(cfg, init_weights=False)  # every weight is loaded below
    if hf_dir is not None:
        from megatron_scir.convert import load_hf_into_model

        load_hf_into_model(chunks, hf_dir, cfg)
    else:
        from megatron_scir.checkpoint import load_checkpoint

        loaded = load_checkpoint(ckpt, chunks, cfg)
        if log:
            logger.info(
                "loaded %s (iteration %d, step %d)", loaded.path, loaded.iteration, loaded.step
            )
    return chunks


def log_to_stderr() -> None:
    """Show megatron-scir's INFO lines (engine choice, checkpoint) unless logging is set up."""
    package = logging.getLogger("megatron_scir")
    if not logging.getLogger().handlers and not package.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
