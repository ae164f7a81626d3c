"""Saving and loading the model (and optimizer) as a Megatron distributed checkpoint.

A checkpoint directory::

    <ckpt>/                          renamed from <ckpt>.incomplete once everything is in it
      metadata.json .metadata *.distcp   megatron.core.dist_checkpointing: every tensor once, under
                                     its global key, so any TP/PP layout can read it
      hf/                            optional assets: the Hugging Face config.json and tokenizer
      scir_checkpoint.json           written last: format version, config, iteration, step, the
                                     size and SHA-256 of every other file, the tokenizer's
                                     fingerprint

Every rank hashes the ``.distcp`` files it wrote (still in the page cache), rank 0 the rest
(:mod:`megatron_scir.checkpoint.verify`); every load checks the files against those hashes first
(cached by :mod:`megatron_scir.hashing`: an untouched checkpoint is not read twice), so a
damaged, truncated or overwritten file is refused with its name, never loaded.

The dist checkpoint holds ``model`` (``model0``, ``model1``, … for virtual pipeline chunks, as
Megatron-LM names them) and ``extra_state`` (common to all ranks, stored by rank 0; plain Python
and tensors only: it is read back with ``weights_only=True``) and, when given, ``optimizer``
(Megatron's ``optimizer.sharded_state_dict``). Scheduler and data position fit ``extra_state``;
per-rank state (RNG) would be a further top-level entry: new entries do not change the format
version, which only counts incompatible changes. Megatron-LM and NeMo 2 checkpoints load too
(see :mod:`megatron_scir.checkpoint.layout`). Megatron-Core is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatron_scir.checkpoint.atomic import commit, fresh_staging, staging_path
from megatron_scir.checkpoint.errors import CheckpointError
from megatron_scir.checkpoint.layout import (
    check_model_shapes,
    inspect_checkpoint,
    retarget_for_load,
)
from megatron_scir.checkpoint.locate import resolve_checkpoint
from megatron_scir.checkpoint.metadata import (
    ASSETS_DIR,
    FORMAT_VERSION,
    METADATA_FILE,
    CheckpointMetadata,
    check_same_model,
    check_tokenizer,
    checkpoint_tokenizer,
    read_metadata,
    tokenizer_fingerprint,
    trained_with,
    write_metadata,
)
from megatron_scir.checkpoint.verify import (
    damaged,
    file_entries,
    files_hashed_by,
    verify_checkpoint,
)
from megatron_scir.config import Config
from megatron_scir.models import padded_vocab_size
from megatron_scir.parallel.child_processes import start_manager

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` read besides the weights."""

    path: Path
    iteration: int
    step: int
    extra_state: dict[str, Any]
    metadata: CheckpointMetadata | None
    """None for a Megatron-LM / NeMo 2 checkpoint."""
    rank_state: Any = None
    """This rank's ``rank_state`` (``load_checkpoint(..., rank_state=True)``, same layout)."""


RANK_STATE = "rank_state"


def _model_state(chunks: Sequence[torch.nn.Module]) -> dict[str, dict]:
    """The chunks' sharded state dicts, unwrapped from DDP/Float16Module (whose sharded keys
    would otherwise start with ``module.``, as NeMo 2's do)."""
    from megatron.core.utils import unwrap_model  # lazy: Megatron-Core

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
    rank_state: Any = None,
    assets: Sequence[str | Path] = (),
    overwrite: bool = False,
) -> Path:
    """Write this rank's model chunks to ``ckpt_dir`` (collective over the whole world).

    Every rank writes its shards into ``<ckpt>.incomplete``; rank 0 then writes the assets and
    the metadata and renames the directory to ``ckpt_dir``.

    Args:
        ckpt_dir: the checkpoint directory (its parent is created).
        chunks: this rank's model chunks (bare, DDP- or Float16Module-wrapped).
        cfg: the run's config, stored in the metadata.
        iteration: self-rewarding iteration the weights belong to.
        step: optimizer steps taken.
        extra_state: picklable state common to all ranks (tensors, numbers, strings, containers).
        optimizer: a Megatron optimizer over ``chunks`` whose state is saved too.
        rank_state: picklable state of THIS rank (its RNG states): stored once per rank and
            given back by :func:`load_checkpoint` only to the same rank of the same layout.
        assets: files copied into ``<ckpt>/hf/`` (HF config.json, tokenizer files).
        overwrite: replace a complete checkpoint at ``ckpt_dir`` (otherwise an error); the old
            one stays complete until the new one has its name.

    Returns:
        ``ckpt_dir``, complete on every rank when this returns.
    """
    from megatron.core import dist_checkpointing  # lazy: Megatron-Core

    final = Path(ckpt_dir)
    staging = _staging_on_all_ranks(final, overwrite=overwrite)
    model_state = _model_state(chunks)
    padded_vocab = _padded_rows(model_state, cfg)
    state = {**model_state, "extra_state": dict(extra_state or {})}
    if optimizer is not None:
        state["optimizer"] = optimizer.sharded_state_dict(model_state)
    if rank_state is not None:
        state[RANK_STATE] = _rank_state_entry(rank_state)
    _start_writer_queue()
    dist_checkpointing.save(state, str(staging))
    files = _hash_written_files(staging)
    if dist.get_rank() == 0:
        names = _copy_assets(assets, staging / ASSETS_DIR)
        files.update(file_entries(staging, (f"{ASSETS_DIR}/{n}" for n in names)))
        metadata = CheckpointMetadata(
            format_version=FORMAT_VERSION,
            iteration=iteration,
            step=step,
            config=cfg,
            padded_vocab_size=padded_vocab,
            layout=_layout(cfg),
            contents=tuple(state),
            assets=tuple(names),
            files=dict(sorted(files.items())),
            tokenizer=_saved_tokenizer(cfg, staging),
            trained_with=trained_with(cfg, step),
        )
        write_metadata(staging, metadata)
        commit(staging, final)
    dist.barrier()
    return final


def _saved_tokenizer(cfg: Config, staging: Path) -> str | None:
    """The fingerprint of the config's tokenizer, else of the one the checkpoint carries."""
    found = tokenizer_fingerprint(cfg.data)
    if found is None and (carried := checkpoint_tokenizer(staging)) is not None:
        kind, path = carried
        data = dataclasses.replace(cfg.data, tokenizer_type=kind.value, tokenizer_path=str(path))
        found = tokenizer_fingerprint(data)
    return found


def _hash_written_files(staging: Path) -> dict[str, dict]:
    """Every rank hashes the ``.distcp`` files it wrote, rank 0 also the others; rank 0 gets
    ``{name: {"size", "sha256"}}`` of them all (other ranks: an empty dict)."""
    dist.barrier()  # every rank's files are complete
    rank, world = dist.get_rank(), dist.get_world_size()
    mine = file_entries(staging, files_hashed_by(staging, rank, world))
    parts = [None] * world if rank == 0 else None
    dist.gather_object(mine, parts, dst=0)
    return {name: entry for part in parts or [] for name, entry in part.items()}


def _verify_on_all_ranks(path: Path) -> None:
    """Check ``path``'s files against their recorded hashes, the work split over the ranks."""
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        problems = verify_checkpoint(path, part=(rank, world)).problems
    except CheckpointError as error:
        problems = [str(error)]
    found = [None] * world
    dist.all_gather_object(found, problems)
    everything = [p for part in found for p in part]
    if everything:
        raise damaged(path, everything)


def _staging_on_all_ranks(final: Path, *, overwrite: bool) -> Path:
    """An empty ``<final>.incomplete`` (made by rank 0; every rank waits for it)."""
    if final.exists() and not overwrite:
        raise CheckpointError(
            f"checkpoint {final} already exists; pass overwrite=True to replace it"
        )
    if dist.get_rank() == 0:
        fresh_staging(final)
    dist.barrier()
    return staging_path(final)


def _padded_rows(model_state: dict[str, dict], cfg: Config) -> int:
    for sd in model_state.values():
        for key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            if key in sd:
                return int(sd[key].global_shape[0])
    return padded_vocab_size(cfg)


def _layout(cfg: Config) -> dict[str, int | None]:
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


def _check_optimizer_state(metadata: CheckpointMetadata | None, path: Path, cfg: Config) -> None:
    if metadata is None or "optimizer" not in metadata.contents:
        raise CheckpointError(f"checkpoint {path} holds no optimizer state to load")
    if metadata.padded_vocab_size != padded_vocab_size(cfg):
        raise CheckpointError(
            f"checkpoint {path}: optimizer state of a {metadata.padded_vocab_size}-row padded "
            f"vocabulary, this layout pads to {padded_vocab_size(cfg)} rows; load the weights "
            "alone, or pick model.make_vocab_size_divisible_by × TP that pads alike"
        )


def load_checkpoint(
    ckpt_dir: str | Path,
    chunks: Sequence[torch.nn.Module],
    cfg: Config,
    *,
    optimizer=None,
    rank_state: bool = False,
) -> LoadedCheckpoint:
    """Load the model weights of any-layout checkpoint ``ckpt_dir`` into this rank's chunks.

    Collective over the whole world. ``cfg`` describes this run's model and layout; it must
    describe the checkpoint's model (see :data:`~megatron_scir.checkpoint.metadata.MODEL_FIELDS`).
    With ``optimizer`` (a Megatron optimizer over ``chunks``) its state is loaded too; that needs
    the same padded vocabulary. With ``rank_state`` this rank's ``rank_state`` is read back
    when the checkpoint was written by a world of the same TP/PP/world size (else None).

    Raises:
        CheckpointError: incomplete or missing checkpoint, a file that fails its recorded hash
            or size (:mod:`~megatron_scir.checkpoint.verify`), another model or tokenizer
            (``cfg.data``'s, when it names one), a missing tensor or a wrong shape (naming the
            tensor, expected and found shape).
    """
    from megatron.core import dist_checkpointing  # lazy: Megatron-Core
    from megatron.core.utils import unwrap_model  # lazy: Megatron-Core

    path = resolve_checkpoint(ckpt_dir)
    metadata = read_metadata(path) if (path / METADATA_FILE).is_file() else None
    if metadata is not None:
        check_same_model(metadata.config.model, cfg.model, path)
        check_tokenizer(metadata.tokenizer, cfg.data, path)
    _verify_on_all_ranks(path)
    contents = inspect_checkpoint(path)
    check_model_shapes(contents, cfg.model)
    model_state = _model_state(chunks)
    state = dict(model_state)
    if optimizer is not None:
        _check_optimizer_state(metadata, path, cfg)
        state["optimizer"] = optimizer.sharded_state_dict(_model_state(chunks), is_loading=True)
    for sharded in model_state.values():
        retarget_for_load(sharded, contents)
    with_rank_state = rank_state and _same_writer_layout(metadata, cfg)
    if with_rank_state:
        state[RANK_STATE] = _rank_state_entry(None)
    loaded = dist_checkpointing.load(state, str(path))
    for key, chunk in zip(model_state, unwrap_model(list(chunks)), strict=True):
        chunk.load_state_dict(loaded[key], strict=True)
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if metadata is None:
        return LoadedCheckpoint(path, 0, int(loaded.get("iteration", 0)), {}, None)
    return LoadedCheckpoint(
        path,
        metadata.iteration,
        metadata.step,
        dict(loaded.get("extra_state", {})),
        metadata,
        loaded[RANK_STATE] if with_rank_state else None,
    )


def _rank_state_entry(data: Any):
    """This rank's slot of the per-rank object ``rank_state`` (one element per global rank)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject  # lazy: Megatron-Core

    world, rank = dist.get_world_size(), dist.get_rank()
    return ShardedObject(RANK_STATE, data, (world,), (rank,), replica_id=0)


def _same_writer_layout(metadata: CheckpointMetadata | None, cfg: Config) -> bool:
    """Per-rank state only means something to the same rank of the same layout."""
    if metadata is None or RANK_STATE not in metadata.contents:
        return False
    return metadata.layout == _layout(cfg)


_writer_manager = None
"""The Manager behind the checkpoint writer's results queue, once :func:`_start_writer_queue`
started it in this process."""


def stop_writer_queue() -> None:
    """Stop the checkpoint writer's helper process of this process, if a save started it (the
    next save starts another). A rank does not need this: the helper exits with it. A long-lived
    process that saved in-process and goes on without saving (a test session, a notebook) uses
    it to leave no helper running."""
    global _writer_manager
    if _writer_manager is None:
        return
    from megatron.core.dist_checkpointing.strategies import (  # lazy: Megatron-Core
        filesystem_async,
    )

    filesystem_async._results_queue = None
    manager, _writer_manager = _writer_manager, None
    manager.shutdown()


def _start_writer_queue() -> None:
    """Start Megatron's checkpoint-writer results queue in a helper that lives as long as this rank.

    ``dist_checkpointing``'s file writer reports through a ``multiprocessing`` Manager: a server
    process spawned on the first save and kept for the life of the rank. Megatron starts it bare
    (``filesystem_async.get_write_results_queue``); this starts it first, with
    :func:`~megatron_scir.parallel.child_processes.exit_with_parent` as the Manager's initializer,
    and hands its queue to Megatron's get-or-create cache (``filesystem_async._results_queue``,
    the name Megatron's own async strategies import), so every save uses it. The server then

    - dies with this rank: a SIGKILLed rank used to leave it running for ever, with SIGTERM
      blocked (it was started with the rank's stop signals blocked);
    - ignores SIGTERM/SIGUSR1 while this rank lives: Slurm's ``--signal`` and ``scancel
      --signal`` reach every process of a job step, and a server dying of them failed the next
      save with a broken pipe, in the middle of the save the signal asked for. Once its rank is
      gone, either signal ends it.

    Later calls find the queue started and return at once.
    """
    from megatron.core.dist_checkpointing.strategies import (  # lazy: Megatron-Core
        filesystem_async,
    )

    global _writer_manager
    if getattr(filesystem_async, "_results_queue", None) is not None:
        return
    _writer_manager = start_manager()
    queue = _writer_manager.Queue()
    filesystem_async._results_queue = queue
    if filesystem_async.get_write_results_queue() is not queue:
        logger.warning(
            "this Megatron-Core keeps its checkpoint-writer queue elsewhere: its writer process "
            "may outlive a killed rank (megatron_scir.checkpoint.io._start_writer_queue)"
        )
