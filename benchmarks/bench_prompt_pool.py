"""Memory and time of a large prompt pool: the whole pool held vs one iteration's slice.

    .venv/bin/python benchmarks/bench_prompt_pool.py                       # 1M rows, slice 10k
    .venv/bin/python benchmarks/bench_prompt_pool.py --rows 200000 --slice 5000 --dir /tmp/pool

Writes a synthetic pool (``--rows`` chat prompts: a system turn + a user turn of 20–60 words, as
``messages`` rows) as JSONL and Parquet once under ``--dir``, then measures each case in a fresh
process: the RSS the records hold once read (over the RSS after the imports) and the process's
peak RSS (``getrusage``):

- ``whole pool`` (the previous ``scir iterate``): ``read_records`` of every row, all held — what
  each rank held for the whole run after the pool was broadcast;
- ``slice``: ``read_records(keep=range(slice))``: every row read and checked, one iteration's
  slice held (what ``scir iterate`` now does per iteration, on rank 0 only, then sends the slice).

The table: seconds, held MB and peak RSS per case and format, and the ratio slice / whole pool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "the sea is wide and blue answer question python sort list capital of France Paris poem "
    "quick brown fox lazy dog cat sat on mat sky why simple words child explain write short"
).split()


def write_pool(folder: Path, rows: int) -> dict[str, Path]:
    """The pool as JSONL and Parquet (written once; reused when present)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    jsonl, parquet = folder / f"pool_{rows}.jsonl", folder / f"pool_{rows}.parquet"
    if not (jsonl.is_file() and parquet.is_file()):
        rng = random.Random(0)
        batch, writer = [], None
        with open(jsonl, "w", encoding="utf-8") as fh:
            for i in range(rows):
                words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
                row = {
                    "id": f"p{i:07d}",
                    "messages": [
                        {"role": "system", "content": "You are a helpful assistant."},
                        {"role": "user", "content": words + "?"},
                    ],
                }
                fh.write(json.dumps(row) + "\n")
                batch.append(row)
                if len(batch) == 100_000 or i == rows - 1:
                    table = pa.Table.from_pylist(batch)
                    writer = writer or pq.ParquetWriter(parquet, table.schema)
                    writer.write_table(table)
                    batch = []
        writer.close()
    return {"jsonl": jsonl, "parquet": parquet}


def measure(path: str, keep: int | None) -> dict[str, float]:
    """In this process: read the pool (all, or keeping ``keep`` records); seconds and MB."""
    import psutil

    from megatron_scir.data import jsonl, read_records, shapes, sources  # noqa: F401  (imports before `base`)

    base = psutil.Process().memory_info().rss
    start = time.perf_counter()
    records, report = read_records(path, "prompts", keep=None if keep is None else range(keep))
    seconds = time.perf_counter() - start
    held_mb = (psutil.Process().memory_info().rss - base) / 2**20
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "held_mb": held_mb, "peak_mb": peak_mb, "held": len(records),
            "rows": report.num_records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--slice", type=int, default=10_000)
    parser.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "scir_pool_bench"))
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # PATH KEEP (child)
    args = parser.parse_args()
    if args.measure:
        path, keep = args.measure
        print(json.dumps(measure(path, None if keep == "all" else int(keep))))
        return

    files = write_pool(Path(args.dir), args.rows)
    print(f"# {args.rows} rows, slice {args.slice}; {platform.node()}, {os.cpu_count()} CPUs, "
          f"load {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"{'format':8} {'case':11} {'records':>9} {'seconds':>8} {'held MB':>8} "
          f"{'peak RSS MB':>12}")
    for form, path in files.items():
        results = {}
        for case, keep in (("whole pool", "all"), ("slice", str(args.slice))):
            done = subprocess.run(
                [sys.executable, __file__, "--measure", str(path), keep],
                capture_output=True, text=True, check=True,
            )
            results[case] = json.loads(done.stdout.strip().splitlines()[-1])
            r = results[case]
            print(f"{form:8} {case:11} {r['held']:>9} {r['seconds']:>8.1f} {r['held_mb']:>8.0f} "
                  f"{r['peak_mb']:>12.0f}")
        whole, part = results["whole pool"], results["slice"]
        print(f"{form:8} {'ratio':11} {'':>9} {part['seconds'] / whole['seconds']:>8.2f} "
              f"{part['held_mb'] / max(whole['held_mb'], 1e-9):>8.2f} "
              f"{part['peak_mb'] / whole['peak_mb']:>12.2f}")


if __name__ == "__main__":
    main()
