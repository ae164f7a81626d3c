"""Print how far one SCIR training step under each layout is from the single-process step.

    python benchmarks/scir_step_parity.py

Runs the bodies of tests/training/test_forward_step_parity.py (the test only bounds these
differences by 1e-5): for every source of micro-batches (pairwise judge with both orders, with
one order, pointwise judge, real ScirDataModule batches) and layout, the metrics reduced over
micro-batches and DP, and the gradient of every parameter gathered back to the TP=1/PP=1
layout. Like the test it runs one reference job, then one job of two and one of four processes,
under the harness's NCCL contiguity rule.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

from megatron_scir.testing.distributed import run_distributed  # noqa: E402
from tests.training.test_forward_step_parity import (  # noqa: E402
    FOUR_PROCESS_CASES,
    TWO_PROCESS_CASES,
    _layouts,
    _reference,
    write_datamodule_inputs,
)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="scir-parity-") as directory:
        data_files = write_datamodule_inputs(pathlib.Path(directory))
        (references,) = run_distributed(_reference, 1, args=(data_files,))
        results = {}
        for world_size, cases in ((2, TWO_PROCESS_CASES), (4, FOUR_PROCESS_CASES)):
            args = (references, cases, data_files)
            results |= run_distributed(_layouts, world_size, args=args, timeout=600)[0][1]
    print("| source | layout | max abs metric diff | max abs gradient diff | max abs gradient |")
    print("|---|---|---|---|---|")
    for name, (metrics, grads) in results.items():
        source, layout = name.split("/")
        _, _, ref_metrics, ref_grads = references[source]
        scale = max(g.abs().max().item() for g in ref_grads.values())
        metric_diff = max(abs(metrics[k] - v) for k, v in ref_metrics.items() if v == v)
        grad_diff = max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads)
        print(f"| {source} | {layout} | {metric_diff:.1e} | {grad_diff:.1e} | {scale:.2f} |")


if __name__ == "__main__":
    main()
