"""Megatron distributed checkpoints (torch_dist) of the model, written atomically.

A checkpoint directory::

    <ckpt>/                          renamed from <ckpt>.incomplete once everything is in it
      metadata.json .metadata *.distcp   megatron.core.dist_checkpointing: every tensor once, under
                                     its global key, so any TP/PP layout can read it
      hf/                            optional assets: the Hugging Face config.json and tokenizer
      scir_checkpoint.json           written last: format version, config, iteration, step

A directory is complete when its name is final and it holds ``scir_checkpoint.json``: a writer
that dies leaves only ``<ckpt>.incomplete`` (removed by the next save to the same path), which
:func:`load_checkpoint` refuses. The dist checkpoint holds ``model`` (``model0``, ``model1``, … for
virtual pipeline chunks, as Megatron-LM names them) and ``extra_state`` (common to all ranks, stored
by rank 0; plain Python and tensors only: it is read back with ``weights_only=True``) and, when
given, ``optimizer`` (Megatron's ``optimizer.sharded_state_dict``). Scheduler and data position fit
``extra_state``; per-rank state (RNG) would be a further top-level entry: new entries do not change
the format version, which only counts incompatible changes.

Megatron-LM and NeMo 2 torch_dist checkpoints of Llama-family GPT models load too (same keys,
NeMo's under ``module.``; see :mod:`megatron_scir.convert.dist_layout`); they have no
``scir_checkpoint.json``, so the caller's config must describe the model, and every tensor shape is
checked against it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from megatron_scir.config import Config, ModelConfig, config_from_dict, load_config, validate
from megatron_scir.convert.errors import CheckpointError

FORMAT = "megatron-scir/torch_dist"
FORMAT_VERSION = 1
METADATA_FILE = "scir_checkpoint.json"
INCOMPLETE_SUFFIX = ".incomplete"
ASSETS_DIR = "hf"
# ModelConfig fields a checkpoint fixes: tensor shapes, and what the weights were trained with.
MODEL_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "head_dim",
    "vocab_size",
    "rotary_base",
    "rope_scaling",
    "layernorm_epsilon",
)

__all__ = [
    "CheckpointError",
    "CheckpointMetadata",
    "LoadedCheckpoint",
    "check_same_model",
    "checkpoint_assets",
    "is_complete",
    "latest_checkpoint",
    "load_checkpoint",
    "read_metadata",
    "resolve_checkpoint",
    "save_checkpoint",
]


@dataclass(frozen=True)
class CheckpointMetadata:
    """The content of ``scir_checkpoint.json``."""

    format_version: int
    iteration: int
    step: int
    config: Config
    padded_vocab_size: int
    layout: dict[str, int | None]
    """TP, PP, VPP and world size of the writer (informational: any layout can read)."""
    contents: tuple[str, ...]
    """Top-level entries of the dist checkpoint (``model``/``model0``…, ``extra_state``)."""
    assets: tuple[str, ...]
    """Files under ``hf/``."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read besides the weights."""

    path: Path
    iteration: int
    step: int
    extra_state: dict[str, Any]
    metadata: CheckpointMetadata | None
    """None for a Megatron-LM / NeMo 2 checkpoint."""


def _model_state(chunks: Sequence[torch.nn.Module]) -> dict[str, dict]:
    """The chunks' sharded state dicts, unwrapped from DDP/Float16Module (whose sharded keys
    would otherwise start with ``module.``, as NeMo 2's do)."""
    from megatron.core.utils import unwrap_model

    models = unwrap_model(list(chunks))
    if len(models) == 1:
        return {"model": models[0].sharded_state_dict()}
    return {f"model{i}": model.sharded_state_dict() for i, model in enumerate(models)}


def save_checkpoint(
    ckpt_dir: str | Path,
    chunks: Sequence[torch.nn.Module],
    cfg: Config,
    *,
    iteration: int,
    step: int,
    extra_state: dict[str, Any] | None = None,
    optimizer=None,
    assets: Sequence[str | Path] = (),
    overwrite: bool = False,
) -> Path:
    """Write this rank's model chunks to ``ckpt_dir`` (collective over the whole world).

    Args:
        ckpt_dir: the checkpoint directory (its parent is created).
        chunks: this rank's model chunks (bare, DDP- or Float16Module-wrapped).
        cfg: the run's config, stored in the metadata.
        iteration: self-rewarding iteration the weights belong to.
        step: optimizer steps taken.
        extra_state: picklable state common to all ranks (tensors, numbers, strings, containers).
        optimizer: a Megatron optimizer over ``chunks`` whose state is saved too.
        assets: files copied into ``<ckpt>/hf/`` (HF config.json, tokenizer files).
        overwrite: replace a complete checkpoint at ``ckpt_dir`` (otherwise an error).

    Returns:
        ``ckpt_dir``, complete on every rank when this returns.
    """
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    final = Path(ckpt_dir)
    staging = _fresh_staging(final, overwrite=overwrite)
    model_state = _model_state(chunks)
    padded_vocab = _padded_rows(model_state, cfg)
    state = {**model_state, "extra_state": dict(extra_state or {})}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_state)
    dist_checkpointing.save(state, str(staging))
    if dist.get_rank() == 0:
        names = _copy_assets(assets, staging / ASSETS_DIR)
        metadata = CheckpointMetadata(
            format_version=FORMAT_VERSION,
            iteration=iteration,
            step=step,
            config=cfg,
            padded_vocab_size=padded_vocab,
            layout=_layout(cfg),
            contents=tuple(state),
            assets=tuple(names),
        )
        _write_metadata(staging, metadata)
        _commit(staging, final)
    dist.barrier()
    return final


def _fresh_staging(final: Path, *, overwrite: bool) -> Path:
    """An empty ``<final>.incomplete`` (made by rank 0; every rank waits for it)."""
    import torch.distributed as dist

    staging = final.with_name(final.name + INCOMPLETE_SUFFIX)
    if final.exists() and not overwrite:
        raise CheckpointError(
            f"checkpoint {final} already exists; pass overwrite=True to replace it"
        )
    if dist.get_rank() == 0:
        if staging.exists():
            shutil.rmtree(staging)  # left by a writer that died
        staging.mkdir(parents=True)
    dist.barrier()
    return staging


def _padded_rows(model_state: dict[str, dict], cfg: Config) -> int:
    for sd in model_state.values():
        for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            if key in sd:
                return int(sd[key].global_shape[0])
    from megatron_scir.models import padded_vocab_size

    return padded_vocab_size(cfg)


def _layout(cfg: Config) -> dict[str, int | None]:
    import torch.distributed as dist

    p = cfg.parallel
    return {
        "tensor_model_parallel_size": p.tensor_model_parallel_size,
        "pipeline_model_parallel_size": p.pipeline_model_parallel_size,
        "virtual_pipeline_model_parallel_size": p.virtual_pipeline_model_parallel_size,
        "world_size": dist.get_world_size(),
    }


def _copy_assets(assets: Sequence[str | Path], dest: Path) -> list[str]:
    names = []
    for item in assets:
        src = Path(item)
        if not src.is_file():
            raise CheckpointError(f"checkpoint asset {src} is not a file")
        dest.mkdir(exist_ok=True)
        shutil.copy2(src, dest / src.name)
        names.append(src.name)
    return sorted(names)


def _write_metadata(directory: Path, metadata: CheckpointMetadata) -> None:
    record = dataclasses.asdict(metadata)
    record["config"] = dataclasses.asdict(metadata.config)
    record = {"format": FORMAT, **record}
    with open(directory / METADATA_FILE, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _commit(staging: Path, final: Path) -> None:
    if not final.exists():
        os.rename(staging, final)
        return
    # overwrite: the old checkpoint stays complete until the new one has its name
    replaced = final.with_name(final.name + ".replaced")
    shutil.rmtree(replaced, ignore_errors=True)
    os.rename(final, replaced)
    os.rename(staging, final)
    shutil.rmtree(replaced)


def read_metadata(ckpt_dir: str | Path) -> CheckpointMetadata:
    """The metadata of a complete megatron-scir checkpoint."""
    path = Path(ckpt_dir) / METADATA_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{ckpt_dir} is not a complete megatron-scir checkpoint: no {path.name}"
        )
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format {record.get('format')!r} version {record.get('format_version')!r}; "
            f"this megatron-scir reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    record.pop("format")
    record["config"] = config_from_dict(record["config"])
    for key in ("contents", "assets"):
        record[key] = tuple(record[key])
    return CheckpointMetadata(**record)


def is_complete(ckpt_dir: str | Path) -> bool:
    """True for a finished megatron-scir checkpoint directory (never for ``*.incomplete``)."""
    path = Path(ckpt_dir)
    return (
        not path.name.endswith(INCOMPLETE_SUFFIX)
        and (path / METADATA_FILE).is_file()
        and (path / "metadata.json").is_file()
    )


def resolve_checkpoint(ckpt_dir: str | Path) -> Path:
    """The torch_dist directory of a megatron-scir, Megatron-LM or NeMo 2 checkpoint.

    Accepts a megatron-scir checkpoint, a Megatron-LM save directory (the iteration named by
    ``latest_checkpointed_iteration.txt``) or ``iter_NNNNNNN`` directory, and a NeMo 2 checkpoint
    (its ``weights/``).
    """
    path = Path(ckpt_dir)
    if path.name.endswith(INCOMPLETE_SUFFIX):
        raise CheckpointError(f"{path} is an incomplete checkpoint: its writer did not finish")
    if not path.is_dir():
        staging = path.with_name(path.name + INCOMPLETE_SUFFIX)
        hint = f"; {staging.name} exists: its writer did not finish" if staging.exists() else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    if (path / METADATA_FILE).is_file():
        return path
    tracker = path / "latest_checkpointed_iteration.txt"
    if tracker.is_file():
        latest = tracker.read_text().strip()
        path = path / ("release" if latest == "release" else f"iter_{int(latest):07d}")
    elif (path / "weights" / "metadata.json").is_file():
        path = path / "weights"
    if (path / "metadata.json").is_file():
        return path
    raise CheckpointError(
        f"{ckpt_dir} is not a complete checkpoint: no {METADATA_FILE} (megatron-scir), "
        "latest_checkpointed_iteration.txt (Megatron-LM), weights/ (NeMo 2) or metadata.json"
    )


def config_for_checkpoint(
    ckpt_dir: str | Path, base: str | Path | None, overrides: Sequence[str] = ()
) -> Config:
    """``load_config(base, overrides)`` with the model section of the model the checkpoint holds.

    The checkpoint's ``scir_checkpoint.json`` gives the model section, so ``--ckpt`` alone is
    enough; ``model.*`` keys among ``overrides`` still apply on top (e.g. ``transformer_impl``,
    ``params_dtype``; a changed shape is refused when the weights load). A Megatron-LM or NeMo 2
    checkpoint carries no megatron-scir metadata: the config's model section is used as is.
    """
    cfg = load_config(base, overrides)
    path = Path(ckpt_dir)
    if not (path / METADATA_FILE).is_file():
        return cfg
    saved = read_metadata(path).config.model
    explicit = {
        key.lstrip("+").split("=", 1)[0].strip().removeprefix("model.")
        for key in overrides
        if key.lstrip("+").startswith("model.")
    }
    model = dataclasses.replace(saved, **{name: getattr(cfg.model, name) for name in explicit})
    cfg = dataclasses.replace(cfg, model=model)
    validate(cfg)
    return cfg


def check_same_model(saved: ModelConfig, current: ModelConfig, where: str | Path) -> None:
    """Refuse a config whose model differs from the checkpoint's in a field the weights fix."""
    for name in MODEL_FIELDS:
        want, found = getattr(current, name), getattr(saved, name)
        if want != found:
            raise CheckpointError(
                f"checkpoint {where} holds another model: model.{name} is {found!r} there, "
                f"{want!r} in the config; use the checkpoint's model config "
                f"({METADATA_FILE})"
            )


def _check_optimizer_state(metadata: CheckpointMetadata | None, path: Path, cfg: Config) -> None:
    from megatron_scir.models import padded_vocab_size

    if metadata is None or "optimizer" not in metadata.contents:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state to load")
    if metadata.padded_vocab_size != padded_vocab_size(cfg):
        raise CheckpointError(
            f"checkpoint {path}: optimizer state of a {metadata.padded_vocab_size}-row padded "
            f"vocabulary, this layout pads to {padded_vocab_size(cfg)} rows; load the weights "
            "alone, or pick model.make_vocab_size_divisible_by × TP that pads alike"
        )


def load_checkpoint(
    ckpt_dir: str | Path, chunks: Sequence[torch.nn.Module], cfg: Config, *, optimizer=None
) -> LoadedCheckpoint:
    """Load the model weights of any-layout checkpoint ``ckpt_dir`` into this rank's chunks.

    Collective over the whole world. ``cfg`` describes this run's model and layout; it must
    describe the checkpoint's model (see :data:`MODEL_FIELDS`). With ``optimizer`` (a Megatron
    optimizer over ``chunks``) its state is loaded too; that needs the same padded vocabulary.

    Raises:
        CheckpointError: incomplete or missing checkpoint, another model, a missing tensor or a
            wrong shape (naming the tensor, expected and found shape).
    """
    from megatron.core import dist_checkpointing
    from megatron.core.utils import unwrap_model

    from megatron_scir.convert.dist_layout import (
        check_model_shapes,
        inspect_checkpoint,
        retarget_for_load,
    )

    path = resolve_checkpoint(ckpt_dir)
    metadata = read_metadata(path) if (path / METADATA_FILE).is_file() else None
    if metadata is not None:
        check_same_model(metadata.config.model, cfg.model, path)
    contents = inspect_checkpoint(path)
    check_model_shapes(contents, cfg.model)
    model_state = _model_state(chunks)
    state = dict(model_state)
    if optimizer is not None:
        _check_optimizer_state(metadata, path, cfg)
        state["optimizer"] = optimizer.sharded_state_dict(_model_state(chunks), is_loading=True)
    for sharded in model_state.values():
        retarget_for_load(sharded, contents)
    loaded = dist_checkpointing.load(state, str(path))
    for key, chunk in zip(model_state, unwrap_model(list(chunks)), strict=True):
        chunk.load_state_dict(loaded[key], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if metadata is None:
        return LoadedCheckpoint(path, 0, int(loaded.get("iteration", 0)), {}, None)
    return LoadedCheckpoint(
        path, metadata.iteration, metadata.step, dict(loaded.get("extra_state", {})), metadata
    )


def checkpoint_assets(ckpt_dir: str | Path) -> list[Path]:
    """The files under ``<ckpt>/hf/`` (pass them as ``assets=`` to carry them to the next save)."""
    assets = Path(ckpt_dir) / ASSETS_DIR
    return sorted(p for p in assets.iterdir() if p.is_file()) if assets.is_dir() else []


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The complete checkpoint under ``save_dir`` with the highest (iteration, step), if any."""
    root = Path(save_dir)
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    if not found:
        return None
    return max(found, key=lambda p: (read_metadata(p).iteration, read_metadata(p).step, p.name))
