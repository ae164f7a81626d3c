"""Finding checkpoints: complete ones, the torch_dist directory inside any format, the latest.

A megatron-scir checkpoint is complete when its name is final and it holds
``scir_checkpoint.json`` (:mod:`megatron_scir.checkpoint.atomic`). Megatron-LM save directories
(``latest_checkpointed_iteration.txt`` → ``iter_NNNNNNN``) and NeMo 2 checkpoints (``weights/``)
resolve to the torch_dist directory they hold. Neither torch nor Megatron-Core is imported here.
"""

from __future__ import annotations

import os
from pathlib import Path

from megatron_scir.checkpoint.atomic import INCOMPLETE_SUFFIX, staging_path
from megatron_scir.checkpoint.errors import CheckpointError
from megatron_scir.checkpoint.metadata import METADATA_FILE, read_metadata

MEGATRON_LM_TRACKER = "latest_checkpointed_iteration.txt"
DIST_METADATA = "metadata.json"  # written by torch.distributed.checkpoint / dist_checkpointing


def is_complete(ckpt_dir: str | Path) -> bool:
    """True for a finished megatron-scir checkpoint directory (never for ``*.incomplete``)."""
    path = Path(ckpt_dir)
    return (
        not path.name.endswith(INCOMPLETE_SUFFIX)
        and (path / METADATA_FILE).is_file()
        and (path / DIST_METADATA).is_file()
    )


def resolve_checkpoint(ckpt_dir: str | Path) -> Path:
    """The torch_dist directory of a megatron-scir, Megatron-LM or NeMo 2 checkpoint.

    Accepts a megatron-scir checkpoint, a Megatron-LM save directory (the iteration named by
    ``latest_checkpointed_iteration.txt``) or ``iter_NNNNNNN`` directory, and a NeMo 2 checkpoint
    (its ``weights/``).

    Raises:
        CheckpointError: an incomplete or missing checkpoint, or a directory of none of these.
    """
    path = Path(ckpt_dir)
    if path.name.endswith(INCOMPLETE_SUFFIX):
        raise CheckpointError(f"{path} is an incomplete checkpoint: its writer did not finish")
    if not path.is_dir():
        staging = staging_path(path)
        hint = f"; {staging.name} exists: its writer did not finish" if staging.exists() else ""
        raise CheckpointError(f"checkpoint {path} does not exist{hint}")
    if not os.access(path, os.R_OK | os.X_OK):
        raise CheckpointError(
            f"checkpoint {path}: permission denied (this user needs read and execute permission "
            "on the folder and read permission on its files)"
        )
    if (path / METADATA_FILE).is_file():
        return path
    tracker = path / MEGATRON_LM_TRACKER
    if tracker.is_file():
        latest = tracker.read_text().strip()
        path = path / ("release" if latest == "release" else f"iter_{int(latest):07d}")
    elif (path / "weights" / DIST_METADATA).is_file():
        path = path / "weights"
    if (path / DIST_METADATA).is_file():
        return path
    raise CheckpointError(
        f"{ckpt_dir} is not a complete checkpoint: no {METADATA_FILE} (megatron-scir), "
        f"{MEGATRON_LM_TRACKER} (Megatron-LM), weights/ (NeMo 2) or {DIST_METADATA}"
    )


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The complete checkpoint under ``save_dir`` with the highest (iteration, step), if any."""
    root = Path(save_dir)
    if not root.is_dir():
        return None
    found = [p for p in root.iterdir() if p.is_dir() and is_complete(p)]
    if not found:
        return None
    return max(found, key=lambda p: (read_metadata(p).iteration, read_metadata(p).step, p.name))
