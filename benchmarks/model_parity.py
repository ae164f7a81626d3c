"""Print how far each parallel layout of the tiny model is from the single-process model.

    python benchmarks/model_parity.py

Runs the bodies of tests/models/test_gpt_parallel.py (2 gloo processes per layout, the same
master weights, Megatron's own schedule and DDP) and prints the measured differences that the
tests only bound (1e-5): the loss, every parameter's gradient gathered back to TP=1/PP=1, the
TP-gathered logits, and the output layer at chosen positions against rows of the full logits.
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).parents[1]))

from megatron_scir.testing.distributed import run_distributed  # noqa: E402
from tests.models.test_gpt_parallel import _layout_vs_reference, _tp_logits_and_head  # noqa: E402

LAYOUTS = {
    "TP=2": ["parallel.tensor_model_parallel_size=2"],
    "TP=2 + SP": ["parallel.tensor_model_parallel_size=2", "parallel.sequence_parallel=true"],
    "PP=2 (1F1B, 2 micro-batches)": ["parallel.pipeline_model_parallel_size=2"],
    "PP=2 × 2 virtual stages (4 layers)": [
        "model.num_layers=4",
        "parallel.pipeline_model_parallel_size=2",
        "parallel.virtual_pipeline_model_parallel_size=2",
    ],
}


def main() -> None:
    print("| layout | abs loss diff | max abs gradient diff | max abs gradient |")
    print("|---|---|---|---|")
    for name, overrides in LAYOUTS.items():
        loss, ref_loss, grads, ref_grads = run_distributed(
            _layout_vs_reference, 2, args=(overrides,)
        )[0]
        diff = max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads)
        scale = max(v.abs().max().item() for v in ref_grads.values())
        print(f"| {name} | {abs(loss - ref_loss):.1e} | {diff:.1e} | {scale:.2f} |")
    ((ref_full, _, _),) = run_distributed(_tp_logits_and_head, 1, args=([],))
    print("\n| TP=2 | max abs logit diff vs TP=1 | output layer at positions vs full rows |")
    print("|---|---|---|")
    for sp in (False, True):
        overrides = ["parallel.tensor_model_parallel_size=2", f"parallel.sequence_parallel={sp}"]
        full, rows, picked = run_distributed(_tp_logits_and_head, 2, args=(overrides,))[0]
        print(
            f"| {'with' if sp else 'without'} SP | {(full - ref_full).abs().max().item():.1e} | "
            f"{(picked - rows).abs().max().item():.1e} |"
        )


if __name__ == "__main__":
    main()
