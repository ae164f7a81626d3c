"""Content fingerprints: streamed SHA-256 of files and folders, cached by what ``stat`` says.

Every output that depends on files (stage markers, generation streams, the evaluation cache,
the reference pass, a checkpoint's own manifest) records the content hashes of those files, so a
file replaced or edited in place is a different input, whatever its path.

Hashing reads the whole file once (1 MiB blocks, constant memory). A 70B checkpoint is not read
again as long as its files are untouched: a digest is remembered under the file's identity and
state — device, inode, size, ``mtime_ns`` and ``ctime_ns`` — in

- a per-process memory (always), and
- one small JSON cache file per user: ``$SCIR_HASH_CACHE`` if set (``off`` disables it), else
  ``$XDG_CACHE_HOME/megatron-scir/content-hashes.json`` (``~/.cache/...``). It lives outside the
  hashed folders, so a read-only checkpoint or a shared data folder is cached too and nothing is
  written into them; on a cluster with a shared home every rank and job sees it.

Any write to a file changes its ``ctime`` (which no user can set back) and a copy has another
inode, so a changed or copied file is always re-read; renaming a folder (a checkpoint's commit)
keeps its files' cache entries. The cache is best effort: an unreadable, corrupt or unwritable
cache file only costs a re-read, and concurrent writers merge under a lock. It keeps the newest
:data:`MAX_ENTRIES` entries.

Standard library only: every layer may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

CACHE_ENV = "SCIR_HASH_CACHE"
CACHE_VERSION = 1
MAX_ENTRIES = 50_000
BLOCK = 1 << 20

_memory: dict[str, tuple[tuple[int, int, int], str]] = {}
"""This process's digests: ``"dev:ino"`` → ((size, mtime_ns, ctime_ns), sha256)."""


def cache_file() -> Path | None:
    """Where the digest cache lives (None: disabled with ``SCIR_HASH_CACHE=off``)."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "none") else Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "megatron-scir" / "content-hashes.json"


def _key(st: os.stat_result) -> tuple[str, tuple[int, int, int]]:
    return f"{st.st_dev}:{st.st_ino}", (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read_cache(path: Path) -> dict[str, list]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if record.get("version") == CACHE_VERSION and isinstance(record.get("entries"), dict):
            return record["entries"]
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _remember(key: str, state: tuple[int, int, int], digest: str) -> None:
    _memory[key] = (state, digest)


def _cached(key: str, state: tuple[int, int, int], disk: Mapping[str, list]) -> str | None:
    hit = _memory.get(key)
    if hit is not None and hit[0] == state:
        return hit[1]
    entry = disk.get(key)
    if isinstance(entry, list) and len(entry) >= 4 and tuple(entry[:3]) == state:
        _remember(key, state, entry[3])
        return entry[3]
    return None


def _save_cache(path: Path, new: Mapping[str, list]) -> None:
    """Merge ``new`` into the cache file under its lock (best effort)."""
    if not new:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(path.name + ".lock"), "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            entries = _read_cache(path)
            entries.update(new)
            if len(entries) > MAX_ENTRIES:  # keep the newest (entries hold their insert time)
                ordered = sorted(entries.items(), key=lambda kv: kv[1][4] if len(kv[1]) > 4 else 0)
                entries = dict(ordered[-MAX_ENTRIES * 4 // 5 :])
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps({"version": CACHE_VERSION, "entries": entries}))
            os.replace(tmp, path)
    except OSError as error:  # a full or read-only home only costs a re-read next time
        logger.debug("content-hash cache %s not written: %s", path, error)
        with contextlib.suppress(OSError):
            path.with_name(f".{path.name}.tmp-{os.getpid()}").unlink(missing_ok=True)


def _stream_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()


def hash_files(paths: Iterable[str | os.PathLike]) -> dict[Path, str]:
    """The SHA-256 (hex) of every file of ``paths``, from the cache where the file is unchanged.

    Raises:
        OSError: a file cannot be read (missing, no permission); the caller words the error.
    """
    store = cache_file()
    disk = _read_cache(store) if store is not None else {}
    out: dict[Path, str] = {}
    new: dict[str, list] = {}
    for item in paths:
        path = Path(item)
        st = os.stat(path)
        key, state = _key(st)
        digest = _cached(key, state, disk)
        if digest is None:
            digest = _stream_sha256(path)
            after = os.stat(path)
            if _key(after) == (key, state):  # unchanged while read: worth remembering
                _remember(key, state, digest)
                new[key] = [*state, digest, int(time.time())]
        out[path] = digest
    if store is not None:
        _save_cache(store, new)
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of one file (cached; see the module docstring)."""
    return hash_files([path])[Path(path)]


def remember(paths_and_digests: Mapping[str | os.PathLike, str]) -> None:
    """Record digests computed elsewhere (e.g. by the ranks of a checkpoint save) for files that
    have not changed since; a file that cannot be stat'ed is skipped."""
    store = cache_file()
    new: dict[str, list] = {}
    for item, digest in paths_and_digests.items():
        try:
            key, state = _key(os.stat(item))
        except OSError:
            continue
        _remember(key, state, digest)
        new[key] = [*state, digest, int(time.time())]
    if store is not None:
        _save_cache(store, new)


def walk_files(folder: str | os.PathLike, *, exclude: Callable[[str], bool] | None = None):
    """The files under ``folder`` as sorted POSIX relative paths (symlinks followed)."""
    root = Path(folder)
    names = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in filenames:
            rel = (rel_dir / name).as_posix()
            if exclude is None or not exclude(rel):
                names.append(rel)
    return sorted(names)


def manifest(
    folder: str | os.PathLike, names: Iterable[str] | None = None
) -> dict[str, dict[str, int | str]]:
    """``{relative path: {"size": bytes, "sha256": hex}}`` of ``names`` (default: every file)."""
    root = Path(folder)
    names = walk_files(root) if names is None else sorted(names)
    digests = hash_files(root / name for name in names)
    return {
        name: {"size": (root / name).stat().st_size, "sha256": digests[root / name]}
        for name in names
    }


def manifest_digest(entries: Mapping[str, Mapping[str, int | str]]) -> str:
    """One SHA-256 over a manifest: relative path, size and digest of every file, sorted."""
    digest = hashlib.sha256()
    for name in sorted(entries):
        entry = entries[name]
        digest.update(f"{name}\0{entry['size']}\0{entry['sha256']}\n".encode())
    return digest.hexdigest()


def content_fingerprint(
    path: str | os.PathLike, *, names: Iterable[str] | None = None
) -> str:
    """``sha256:<hex>`` of a file, or ``tree-sha256:<hex>`` of a folder (every file, or those of
    ``names`` that exist: :func:`manifest_digest`); ``missing`` when nothing is there.

    Raises:
        OSError: a file cannot be read.
    """
    path = Path(path)
    if path.is_file():
        return f"sha256:{file_sha256(path)}"
    if path.is_dir():
        if names is not None:
            names = [n for n in names if (path / n).is_file()]
        return f"tree-sha256:{manifest_digest(manifest(path, names))}"
    return "missing"


def short(fingerprint: str) -> str:
    """``sha256:1a2b3c4d5e6f`` — a fingerprint shortened for a message (12 hex digits)."""
    kind, _, hexdigest = fingerprint.partition(":")
    return f"{kind}:{hexdigest[:12]}" if hexdigest else fingerprint


@contextlib.contextmanager
def no_disk_cache() -> Iterator[None]:
    """Hash without the cache file (benchmarks: the cold cost); the memory is cleared too."""
    before = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = "off"
    _memory.clear()
    try:
        yield
    finally:
        _memory.clear()
        if before is None:
            del os.environ[CACHE_ENV]
        else:
            os.environ[CACHE_ENV] = before
