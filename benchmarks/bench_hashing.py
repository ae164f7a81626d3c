"""What content fingerprints cost: hashing a checkpoint-sized folder cold and warm.

Writes a folder shaped like a torch_dist checkpoint (``--files`` ``__<r>_0.distcp`` files of
random bytes adding up to ``--size-gb``, plus a small ``.metadata`` and ``metadata.json``),
fsyncs it, then times :func:`megatron_scir.hashing.manifest` — what a checkpoint save, every
load, ``scir verify`` and the content identity compute — three ways:

- **cold, page cache dropped**: no digest cache file, the files evicted from the OS page cache
  (``posix_fadvise(DONTNEED)`` on each fsynced file, which needs no privileges; where the kernel
  ignores it the row equals the next one): the first verification of a checkpoint copied in;
- **cold, page cache warm**: no digest cache file, the bytes in memory (as right after a save):
  SHA-256 itself;
- **warm**: the digest cache file written by the cold run (a new process would find it): one
  ``stat`` per file.

    python benchmarks/bench_hashing.py                         # 2 GB under $TMPDIR
    python benchmarks/bench_hashing.py --dir /scratch/x --size-gb 20 --files 64

Prints a Markdown table (seconds, GB/s) and removes the folder unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from megatron_scir import hashing

BLOCK = 64 << 20


def make_folder(root: Path, size_gb: float, files: int) -> int:
    """The checkpoint-shaped folder; returns its bytes."""
    root.mkdir(parents=True, exist_ok=True)
    per_file = int(size_gb * 1e9) // files
    seed = os.urandom(BLOCK)
    total = 0
    for rank in range(files):
        with open(root / f"__{rank}_0.distcp", "wb") as fh:
            left = per_file
            while left > 0:
                # a different block each time: no two files (or blocks) share content
                block = (rank.to_bytes(4, "little") + left.to_bytes(8, "little")) + seed[12:]
                fh.write(block[:left])
                left -= len(block[:left])
            fh.flush()
            os.fsync(fh.fileno())
        total += per_file
    (root / ".metadata").write_bytes(os.urandom(64 << 10))
    (root / "metadata.json").write_text('{"sharded_backend": "torch_dist"}')
    return total + (64 << 10)


def drop_page_cache(root: Path) -> None:
    """Evict the folder's (clean, fsynced) pages from the OS page cache."""
    for path in root.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(root: Path) -> float:
    hashing._memory.clear()  # a fresh process: only the cache file (if any) is known
    start = time.perf_counter()
    hashing.manifest(root)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", help="where to write the folder (default: a new temp folder)")
    parser.add_argument("--size-gb", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=8, help=".distcp files (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the folder")
    args = parser.parse_args()

    work = Path(args.dir or tempfile.mkdtemp(prefix="scir-bench-hashing-"))
    folder, cache = work / "ckpt", work / "content-hashes.json"
    os.environ[hashing.CACHE_ENV] = str(cache)
    try:
        size = make_folder(folder, args.size_gb, args.files)
        rows = []
        cache.unlink(missing_ok=True)
        drop_page_cache(folder)
        rows.append(("cold, page cache dropped", timed(folder)))
        cache.unlink(missing_ok=True)
        timed(folder)  # the bytes are in the page cache now (if they fit)
        cache.unlink(missing_ok=True)
        rows.append(("cold, page cache warm", timed(folder)))
        rows.append(("warm (digest cache file)", timed(folder)))
        print(
            f"{size / 1e9:.2f} GB in {args.files + 2} files; {platform.node()}, "
            f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; "
            f"{platform.python_implementation()} {platform.python_version()}"
        )
        print("\n| case | time | GB/s |\n|---|---:|---:|")
        for name, seconds in rows:
            shown = f"{seconds:.2f} s" if seconds >= 0.1 else f"{seconds * 1e3:.2f} ms"
            print(f"| {name} | {shown} | {size / 1e9 / seconds:,.2f} |")
        print(f"\ncache file: {cache.stat().st_size} bytes, "
              f"{len(json.loads(cache.read_text())['entries'])} entries")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
