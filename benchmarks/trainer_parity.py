"""Print how far five optimizer steps under each layout end from the single-process run.

    python benchmarks/trainer_parity.py

Runs the bodies of tests/training/test_trainer.py (the test bounds the weight differences by
1e-5): the tiny model (4 layers) trained by ``megatron_scir.training.trainer.train`` for five
Adam steps at lr 1e-3 on 16 real pairs (a SentencePiece tokenizer trained here), 4 micro-batches
of one pair per step in one process, from the same master weights; the final weights of every
layout are gathered back to the TP=1/PP=1 layout and compared with the single-process run's.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

from megatron_scir.testing.distributed import run_distributed  # noqa: E402
from megatron_scir.testing.tokenizers import train_tiny_sentencepiece  # noqa: E402
from tests.training.test_trainer import LAYOUTS, _run_layouts, write_pairs  # noqa: E402


def main() -> None:
    root = pathlib.Path(tempfile.mkdtemp(prefix="trainer-parity-"))
    inputs = (str(train_tiny_sentencepiece(root)), str(write_pairs(root / "pairs.jsonl")))
    (single,) = run_distributed(_run_layouts, 1, args=(*inputs, str(root / "one"), {"one": []}))
    _, ref_metrics, ref_weights = single["one"]
    ranks = run_distributed(
        _run_layouts, 2, args=(*inputs, str(root / "two"), LAYOUTS), timeout=900
    )
    largest = max(w.abs().max().item() for w in ref_weights.values())
    print(
        f"| layout | abs loss diff at step 5 | max abs weight diff (max abs weight {largest:.2f}) |"
    )
    print("|---|---|---|")
    for name in LAYOUTS:
        loss_diff = weight_diff = 0.0
        for rank in ranks:
            _, metrics, weights = rank[name]
            loss_diff = max(loss_diff, abs(metrics["loss/total"] - ref_metrics["loss/total"]))
            weight_diff = max(
                weight_diff, *((weights[n] - ref_weights[n]).abs().max().item() for n in weights)
            )
        print(f"| {name} | {loss_diff:.1e} | {weight_diff:.1e} |")


if __name__ == "__main__":
    main()
