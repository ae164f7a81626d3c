"""Hugging Face model folders: lazy safetensors reading, streamed sharded writing, asset copies.

Reading opens each ``*.safetensors`` file once (memory-mapped) and materialises one tensor at a
time. Writing buffers at most one shard (``max_shard_bytes``) before it goes to disk, then names
the shards ``model-0000k-of-0000n.safetensors`` with a ``model.safetensors.index.json`` (or a
single ``model.safetensors``), as ``save_pretrained`` does. An output folder is written under
``<out>.incomplete`` (:mod:`megatron_scir.checkpoint.atomic`) and renamed when complete.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from megatron_scir.checkpoint.atomic import fresh_staging
from megatron_scir.convert.errors import ConversionError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30
# Files copied through a conversion besides the weights and config.json (tokenizer and friends).
ASSET_FILES = (
    "generation_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tekken.json",
)
ASSET_GLOBS = ("tokenizer*",)


class SafetensorsReader:
    """Tensors of a Hugging Face model folder by name, read one at a time."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.hf_dir = Path(hf_dir)
        self._handles: dict[str, object] = {}
        index, single = self.hf_dir / INDEX_FILE, self.hf_dir / SINGLE_FILE
        if index.is_file():
            self._file_of = dict(json.loads(index.read_text())["weight_map"])
        elif single.is_file():
            self._file_of = dict.fromkeys(self._open(SINGLE_FILE).keys(), SINGLE_FILE)
        else:
            raise ConversionError(
                f"{self.hf_dir}: no {SINGLE_FILE} or {INDEX_FILE} (PyTorch .bin weights are not "
                "read: save the model with save_pretrained(..., safe_serialization=True))"
            )

    def _open(self, file: str):
        if file not in self._handles:
            path = self.hf_dir / file
            if not path.is_file():
                raise ConversionError(f"{self.hf_dir}: {INDEX_FILE} names {file}, which is missing")
            self._handles[file] = safe_open(str(path), framework="pt")
        return self._handles[file]

    def names(self) -> list[str]:
        """Every tensor name of the folder."""
        return list(self._file_of)

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape of tensor ``name`` without reading its data."""
        return tuple(self._open(self._file_of[name]).get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (read from disk now)."""
        return self._open(self._file_of[name]).get_tensor(name)

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SafetensorsWriter:
    """Streams named tensors into safetensors shards of at most ``max_shard_bytes`` each."""

    def __init__(self, out_dir: str | Path, *, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.out_dir = Path(out_dir)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor`` as ``name``; first writes the pending shard if it would overflow."""
        size = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + size > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = tensor.contiguous()
        self._buffer_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.out_dir / f"shard-{len(self._shards) + 1:05d}.partial"
        save_file(self._buffer, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard, name all shards, write the index; returns the file names."""
        if self._buffer:
            self._flush()
        count = len(self._shards)
        if count == 1:
            self._shards[0][0].rename(self.out_dir / SINGLE_FILE)
            return [SINGLE_FILE]
        weight_map = {}
        for k, (path, names) in enumerate(self._shards, start=1):
            final = f"model-{k:05d}-of-{count:05d}.safetensors"
            path.rename(self.out_dir / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
        (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        return sorted(set(weight_map.values())) + [INDEX_FILE]


def asset_files(src_dir: str | Path) -> list[Path]:
    """The tokenizer (and generation config) files present in ``src_dir``."""
    src = Path(src_dir)
    found = {src / name for name in ASSET_FILES if (src / name).is_file()}
    for pattern in ASSET_GLOBS:
        found.update(p for p in src.glob(pattern) if p.is_file())
    return sorted(found)


def copy_assets(src_dir: str | Path, dst_dir: str | Path) -> list[str]:
    """Copy :func:`asset_files` of ``src_dir`` into ``dst_dir``; returns the names copied."""
    names = []
    for path in asset_files(src_dir):
        shutil.copy2(path, Path(dst_dir) / path.name)
        names.append(path.name)
    return names


def staging_dir(out_dir: str | Path) -> Path:
    """A fresh ``<out_dir>.incomplete`` to write into; refuses an existing non-empty ``out_dir``.

    Commit the finished folder with :func:`megatron_scir.checkpoint.atomic.commit`.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConversionError(f"{out} already exists and is not empty: choose another --out")
    return fresh_staging(out)
