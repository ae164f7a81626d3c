"""Directories that appear under their final name only once complete.

A writer fills ``<final>.incomplete`` and renames it to ``<final>`` when everything is in it, so a
reader never sees a half-written directory under its final name, and a writer that dies leaves
only ``<final>.incomplete`` (replaced by the next writer of the same directory). Used by the
distributed checkpoint writer (:func:`megatron_scir.checkpoint.save_checkpoint`: rank 0 makes the
staging directory and commits it, every rank writes in between) and by the Hugging Face exporter
(:func:`megatron_scir.convert.export_to_hf`, one process). Refusing an existing ``<final>`` is
the caller's policy: each says what to do in its own error. Plain file-system calls, no
collectives.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

INCOMPLETE_SUFFIX = ".incomplete"
REPLACED_SUFFIX = ".replaced"


def staging_path(final: str | Path) -> Path:
    """``<final>.incomplete``: where the directory ``final`` is written before its commit."""
    final = Path(final)
    return final.with_name(final.name + INCOMPLETE_SUFFIX)


def fresh_staging(final: str | Path) -> Path:
    """An empty ``<final>.incomplete`` (its parents created) to write ``final``'s content into.

    A staging directory already there was left by a writer that died: it is removed first.
    ``final`` itself is left alone until :func:`commit`.
    """
    staging = staging_path(final)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


def commit(staging: str | Path, final: str | Path) -> Path:
    """Give the finished ``staging`` directory its name ``final``; returns ``final``.

    An existing ``final`` (an overwritten checkpoint, an empty output folder) is renamed to
    ``<final>.replaced`` first and removed once the new directory has its name, so the old one
    stays whole until then.
    """
    final = Path(final)
    if not final.exists():
        os.rename(staging, final)
        return final
    replaced = final.with_name(final.name + REPLACED_SUFFIX)
    shutil.rmtree(replaced, ignore_errors=True)  # left by a commit that died
    os.rename(final, replaced)
    os.rename(staging, final)
    shutil.rmtree(replaced)
    return final
