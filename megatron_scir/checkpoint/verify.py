"""A checkpoint's files against the hashes written at save (``scir verify``, every load).

At save every rank hashes the ``.distcp`` files it wrote and rank 0 the rest (``.metadata``,
``metadata.json``, ``common.pt``, ``hf/``); ``scir_checkpoint.json`` lists them as ``files``:
``{relative path: {"size": bytes, "sha256": hex}}`` (it is written last and is not in its own
list). :func:`verify_checkpoint` then finds, in this order, what is missing, what has another
size (a truncated ``.distcp`` names the first tensor whose bytes are gone, from the torch_dist
index ``.metadata``) and what has other content. A checkpoint without recorded hashes (written
before they existed, or by Megatron-LM / NeMo) still gets the structural checks.

Hashing goes through :mod:`megatron_scir.hashing`'s cache, so verifying an untouched checkpoint
a second time reads no tensor data. The work splits over the ranks of a load (``part``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from megatron_scir.checkpoint.errors import CheckpointError
from megatron_scir.checkpoint.locate import DIST_METADATA, resolve_checkpoint
from megatron_scir.checkpoint.metadata import METADATA_FILE, read_metadata
from megatron_scir.hashing import hash_files, manifest, manifest_digest, short, walk_files

DIST_INDEX = ".metadata"
"""torch.distributed.checkpoint's index: where every tensor's bytes are in which ``.distcp``."""
_WRITER = re.compile(r"__(\d+)_\d+\.distcp$")


def writer_rank(name: str) -> int | None:
    """The rank that wrote ``__<rank>_<i>.distcp`` (None for other files)."""
    found = _WRITER.fullmatch(name)
    return int(found.group(1)) if found else None


def files_hashed_by(directory: str | os.PathLike, rank: int, world: int) -> list[str]:
    """At save: the files of ``directory`` rank ``rank`` hashes — its own ``.distcp`` files; rank 0
    also every file no rank of ``world`` wrote. ``scir_checkpoint.json`` is never listed."""
    names = walk_files(directory, exclude=lambda n: n == METADATA_FILE)

    def owner(name: str) -> int:
        r = writer_rank(name)
        return r if r is not None and r < world else 0

    return [n for n in names if owner(n) == rank]


def file_entries(directory: str | os.PathLike, names: Iterable[str]) -> dict[str, dict]:
    """``{name: {"size", "sha256"}}`` of ``names`` under ``directory`` (hashed, cached)."""
    root = Path(directory)
    names = list(names)
    digests = hash_files(root / n for n in names)
    return {n: {"size": (root / n).stat().st_size, "sha256": digests[root / n]} for n in names}


@dataclass
class Verdict:
    """What :func:`verify_checkpoint` found."""

    path: Path
    recorded: bool
    """The checkpoint lists its files' hashes (else: structural checks only)."""
    num_files: int = 0
    num_bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        """The one-line verdict."""
        if not self.ok:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"{self.problems[0]}{more}"
        size = f"{self.num_files} files, {self.num_bytes / 2**20:.1f} MiB"
        if self.recorded:
            return f"{self.path}: OK ({size} match the SHA-256 recorded at save)"
        return (
            f"{self.path}: OK as far as can be checked ({size}; no hashes recorded at save: "
            "only presence and sizes against .metadata were checked)"
        )


def verify_checkpoint(ckpt_dir: str | os.PathLike, *, part: tuple[int, int] = (0, 1)) -> Verdict:
    """Check the checkpoint at ``ckpt_dir`` (any format :func:`resolve_checkpoint` knows).

    Args:
        ckpt_dir: the checkpoint.
        part: ``(i, n)``: hash only every n-th recorded file from the i-th (the ranks of a load
            share the work); the structural checks run in part 0.

    Raises:
        CheckpointError: no checkpoint there at all (missing, incomplete, unreadable folder).
    """
    path = resolve_checkpoint(ckpt_dir)
    index, count = part
    recorded: Mapping[str, Mapping] = {}
    if (path / METADATA_FILE).is_file():
        recorded = read_metadata(path).files
    verdict = Verdict(path, bool(recorded))
    if index == 0:
        verdict.problems += structural_problems(path, recorded)
    names = sorted(recorded)
    verdict.num_files = len(names)
    verdict.num_bytes = sum(int(recorded[n]["size"]) for n in names)
    if not recorded:
        files = [n for n in walk_files(path) if (path / n).is_file()]
        verdict.num_files = len(files)
        verdict.num_bytes = sum((path / n).stat().st_size for n in files)
    mine = [n for n in names[index::count] if _same_size(path / n, recorded[n])]
    try:
        digests = hash_files(path / n for n in mine)
    except OSError as error:
        verdict.problems.append(f"{error.filename}: cannot be read ({error.strerror})")
        return verdict
    for name in mine:
        want, found = recorded[name]["sha256"], digests[path / name]
        if want != found:
            verdict.problems.append(
                f"{path / name}: content differs from the SHA-256 recorded at save "
                f"({short('sha256:' + want)} expected, {short('sha256:' + found)} found)"
            )
    return verdict


def _same_size(file: Path, entry: Mapping) -> bool:
    try:
        return file.stat().st_size == int(entry["size"])
    except OSError:
        return False


def structural_problems(path: Path, recorded: Mapping[str, Mapping]) -> list[str]:
    """Missing files, ``.distcp`` files shorter than the torch_dist index says (naming the first
    tensor whose bytes are missing), and sizes that differ from the recorded ones."""
    problems = []
    for name in (DIST_METADATA, DIST_INDEX):
        if not (path / name).is_file():
            problems.append(
                f"{path / name}: missing (written by dist_checkpointing with the tensors): the "
                "checkpoint is incomplete or damaged"
            )
    if (path / DIST_INDEX).is_file():
        problems += _index_problems(path)
    for name in sorted(recorded):
        file, want = path / name, int(recorded[name]["size"])
        if any(p.startswith(f"{file}: ") for p in problems):
            continue
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            problems.append(f"{file}: missing ({want} bytes recorded at save)")
            continue
        except OSError as error:
            problems.append(f"{file}: cannot be read ({error.strerror})")
            continue
        if size != want:
            how = "truncated" if size < want else "grown"
            problems.append(f"{file}: {size} bytes, {want} recorded at save ({how})")
    return problems


def _index_problems(path: Path) -> list[str]:
    """``.distcp`` files missing or too short for the bytes the index places in them."""
    try:
        # lazy: torch (the index is a pickled torch.distributed.checkpoint Metadata)
        from torch.distributed.checkpoint import FileSystemReader

        storage = FileSystemReader(str(path)).read_metadata().storage_data
    except Exception as error:  # noqa: BLE001 -- any unpickling failure means a damaged index
        return [f"{path / DIST_INDEX}: unreadable torch_dist index ({type(error).__name__}: "
                f"{error})"]
    need: dict[str, tuple[int, str]] = {}
    for index, info in storage.items():
        end = int(info.offset) + int(info.length)
        prev = need.get(info.relative_path)
        if prev is None or end > prev[0]:
            need[info.relative_path] = (end, index.fqn)
    problems = []
    for name in sorted(need):
        file = path / name
        try:
            size = file.stat().st_size
        except FileNotFoundError:
            problems.append(f"{file}: missing (the index {DIST_INDEX} places tensors in it)")
            continue
        except OSError as error:
            problems.append(f"{file}: cannot be read ({error.strerror})")
            continue
        if size < need[name][0]:
            first = min(
                (int(info.offset), index.fqn)
                for index, info in storage.items()
                if info.relative_path == name and int(info.offset) + int(info.length) > size
            )
            problems.append(
                f"{file}: truncated at {size} bytes, {DIST_INDEX} places data up to byte "
                f"{need[name][0]} (the bytes of {first[1]} onwards are missing)"
            )
    return problems


def check_checkpoint(ckpt_dir: str | os.PathLike, *, part: tuple[int, int] = (0, 1)) -> Verdict:
    """:func:`verify_checkpoint`, raising on a problem.

    Raises:
        CheckpointError: the one-line verdict, with the way out.
    """
    verdict = verify_checkpoint(ckpt_dir, part=part)
    if not verdict.ok:
        raise damaged(verdict.path, verdict.problems)
    return verdict


def damaged(path: Path, problems: list[str]) -> CheckpointError:
    """The error for a checkpoint whose files fail their checks."""
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return CheckpointError(
        f"checkpoint {path} is damaged: {problems[0]}{more}; restore it from a copy or use "
        f"another checkpoint (scir verify {path} checks it again)"
    )


def checkpoint_identity(ckpt_dir: str | os.PathLike) -> str:
    """What a model loaded from a checkpoint is known by: its content.

    ``<resolved path>|content-sha256:<digest>|mtime_ns:<n>``. For a checkpoint that lists its
    files' hashes the files are checked against them (cached: no re-read of untouched files)
    and the digest is that of ``scir_checkpoint.json``, which holds them; for any other
    checkpoint it is the digest of every file (:func:`~megatron_scir.hashing.manifest_digest`).
    The metadata file's modification time tells apart a checkpoint saved again in place.

    Raises:
        CheckpointError: a file fails its recorded hash or size, or cannot be read.
    """
    path = resolve_checkpoint(ckpt_dir).resolve()
    meta = path / METADATA_FILE
    try:
        if meta.is_file() and _recorded_files(path):
            check_checkpoint(path)
            digest = hash_files([meta])[meta]
        else:
            meta = meta if meta.is_file() else path / DIST_METADATA
            digest = manifest_digest(manifest(path))
        mtime = meta.stat().st_mtime_ns
    except OSError as error:
        raise CheckpointError(
            f"checkpoint {path}: {error.filename} cannot be read ({error.strerror})"
        ) from error
    return f"{path}|content-sha256:{digest}|mtime_ns:{mtime}"


def _recorded_files(path: Path) -> Mapping[str, Mapping]:
    try:
        return read_metadata(path).files
    except CheckpointError:  # not ours to judge here: the loader reports it
        return {}
