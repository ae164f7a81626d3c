"""Print how far one SCIR training step under each layout is from the single-process step.

    python benchmarks/scir_step_parity.py

Runs the bodies of tests/training/test_forward_step_parity.py (the test only bounds these
differences by 1e-5): metrics reduced over micro-batches and DP, and the gradient of every
parameter gathered back to the TP=1/PP=1 layout.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

from megatron_scir.testing.distributed import run_distributed  # noqa: E402
from tests.training.test_forward_step_parity import _layouts, _reference  # noqa: E402


def main() -> None:
    ((batches, ref_metrics, ref_grads),) = run_distributed(_reference, 1)
    results = run_distributed(_layouts, 2, args=(batches,))[0]
    scale = max(g.abs().max().item() for g in ref_grads.values())
    print(
        f"| layout | max abs metric diff | max abs gradient diff (max abs gradient {scale:.2f}) |"
    )
    print("|---|---|---|")
    for name, (metrics, grads) in results.items():
        metric_diff = max(abs(metrics[k] - v) for k, v in ref_metrics.items() if v == v)
        grad_diff = max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads)
        print(f"| {name} | {metric_diff:.1e} | {grad_diff:.1e} |")


if __name__ == "__main__":
    main()
