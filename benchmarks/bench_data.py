"""Throughput of the SCIR data path on CPU: read + validate + tokenise, then collate, N pairs.

    .venv/bin/python benchmarks/bench_data.py                   # 100k pairs, 0 and 2 workers
    .venv/bin/python benchmarks/bench_data.py --pairs 20000 --workers 0 1 2
    .venv/bin/python benchmarks/bench_data.py --tokenizer /path/to/tokenizer.model

Synthetic short pairs (prompts of 4–12 words, responses of 5–20 words, from a small word list)
are written to a temporary pairs.jsonl. For each worker count, ``ScirDataModule.setup("fit")``
reads, validates and tokenises every pair (policy rows for y1 and y2, judge rows in both orders
with the default pairwise template), then one epoch of ``train_dataloader()`` collates
fixed-shape micro-batches. The table reports pairs/s for each phase and for both together.
Default tokenizer: the tiny 256-piece SentencePiece model of ``megatron_scir.testing`` (judge
sequences are long in tokens with so small a vocabulary: more work per pair than a 32k model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from megatron_scir.config import load_config
from megatron_scir.data import ScirDataModule, build_tokenizer
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

WORDS = (
    "the sea is wide and blue answer question python sort list capital of France Paris poem "
    "quick brown fox lazy dog cat sat on mat sky why simple words child explain write short"
).split()


def write_pairs(path: Path, num_pairs: int, seed: int = 0) -> None:
    """Synthetic unlabeled pairs, two per prompt."""
    rng = random.Random(seed)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    with open(path, "w", encoding="utf-8") as fh:
        for i in range(num_pairs):
            if i % 2 == 0:
                prompt = text(4, 12)
            row = {
                "pair_id": f"p{i // 2}:{i % 2}",
                "prompt_id": f"p{i // 2}",
                "prompt": prompt,
                "response_1": text(5, 20),
                "response_2": text(5, 20),
            }
            fh.write(json.dumps(row) + "\n")


def run(pairs_path: Path, tokenizer_path: Path, tokenizer_type: str, workers: int, args) -> dict:
    """Time setup (read + validate + tokenise) and one epoch of collation."""
    cfg = load_config(
        "tiny",
        [
            f"data.tokenizer_type={tokenizer_type}",
            f"data.tokenizer_path={tokenizer_path}",
            f"data.max_prompt_length={args.max_prompt_length}",
            f"data.max_response_length={args.max_response_length}",
            f"data.judge_max_length={args.judge_max_length}",
            f"model.max_position_embeddings={max(args.judge_max_length, 512)}",
            f"data.num_workers={workers}",
            f"train.micro_batch_size={args.micro_batch_size}",
            f"train.global_batch_size={args.global_batch_size}",
        ],
    )
    tokenizer = build_tokenizer(cfg.data)
    dm = ScirDataModule(
        cfg,
        tokenizer,
        layout=MicroBatchLayout.for_training(cfg),
        dp_rank=0,
        dp_size=1,
        train_path=pairs_path,
    )
    start = time.perf_counter()
    dm.setup("fit")
    setup_s = time.perf_counter() - start
    start = time.perf_counter()
    num_batches = tokens = 0
    for batch in dm.train_dataloader():
        num_batches += 1
        tokens += int((batch["tokens"] != tokenizer.pad_id).sum())
    collate_s = time.perf_counter() - start
    used = num_batches * args.micro_batch_size
    return {
        "workers": workers,
        "pairs": len(dm.pairs),
        "setup_s": setup_s,
        "collate_s": collate_s,
        "setup_pps": len(dm.pairs) / setup_s,
        "collate_pps": used / collate_s,
        "total_pps": len(dm.pairs) / (setup_s + collate_s * len(dm.pairs) / used),
        "tokens_per_pair": tokens / used,
        "rows": dm.layout.num_rows,
        "seq": dm.seq_length,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--tokenizer", type=Path, help="a .model file or an HF directory")
    parser.add_argument("--max-prompt-length", type=int, default=64)
    parser.add_argument("--max-response-length", type=int, default=64)
    parser.add_argument("--judge-max-length", type=int, default=384)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--global-batch-size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = args.tokenizer or train_tiny_sentencepiece(tmp)
        kind = "hf" if Path(tokenizer).is_dir() else "sentencepiece"
        pairs_path = Path(tmp) / "pairs.jsonl"
        write_pairs(pairs_path, args.pairs)
        load_before = os.getloadavg()[0]
        results = [run(pairs_path, tokenizer, kind, w, args) for w in args.workers]
    print(
        f"{args.pairs} pairs, tokenizer {Path(tokenizer).name}, micro-batch {args.micro_batch_size}"
        f" pairs ({results[0]['rows']} rows x S={results[0]['seq']}), {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}); 1-min load average before "
        f"{load_before:.1f}, after {os.getloadavg()[0]:.1f} (other processes share the CPUs)"
    )
    print("| workers | setup s | setup pairs/s | collate pairs/s | total pairs/s | tokens/pair |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['workers']} | {r['setup_s']:.1f} | {r['setup_pps']:,.0f} | "
            f"{r['collate_pps']:,.0f} | {r['total_pps']:,.0f} | {r['tokens_per_pair']:.0f} |"
        )


if __name__ == "__main__":
    main()
