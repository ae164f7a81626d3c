"""GPU check: the reference pass makes every pair an exact tie at the first step (SCIR_SPEC §4).

At the first training step of an iteration πθ = πref, so Δ_I must be 0 bit for bit, not merely
within ``scir.tie_eps``. This holds only if the reference pass computes log πref in the same
micro-batch shape and code path as training (``megatron_scir/training/reference.py``). On a GPU,
bfloat16 kernels are the ones that would break it, so this script checks it there:

1. train a tiny SentencePiece tokenizer and write a pairs JSONL of short real texts;
2. build the ``tiny`` model with random weights (``model.params_dtype=bfloat16``, one run per
   ``model.transformer_impl`` given) and wrap it in Megatron DDP as training does;
3. the recipe's reference stage (``recipe.reference_stage``: ``run_reference_pass`` in the
   mode's training and reference layouts) writes the pairs with ``ref_logps`` and the judge's
   log-odds;
4. the training step (``make_forward_step`` in Megatron's schedule, forward and backward, one
   schedule call per optimizer step but no optimizer update) over every micro-batch of
   ``ScirDataModule.train_dataloader()`` on that file, in the training layout
   (``MicroBatchLayout.for_training``);
5. assert: the step's policy log-probs equal the stored ``ref_logps``, and its judge log-odds
   the stored ``ref_judge_logits``, bit for bit for every pair; ``scir/ties == 1`` and
   ``scir/consistency_rate == 0``.

Launch on a GPU machine (exit status 1 on a failed check, 2 without CUDA):

    python scripts/gpu_check_ties.py                                 # TP=1, local + sdpa (+ te)
    torchrun --nproc-per-node 2 scripts/gpu_check_ties.py parallel.tensor_model_parallel_size=2

The same functions run on CPU under gloo in ``tests/training/test_reference.py`` (float32 and
bfloat16, TP=1/2, DP=2, interleaved PP), so this script is exercised by the test suite.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from megatron_scir.config import Config, load_config
from megatron_scir.training.metrics_log import CONSISTENCY_RATE

SEED = 1234
# The default pairwise judge template takes ~180 tokens with the tiny 256-piece tokenizer.
TINY_BUDGETS = [
    "data.max_prompt_length=32",
    "data.max_response_length=32",
    "data.judge_max_length=256",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
]
WORDS = (
    "the sea is wide and blue answer question python sort list capital of France Paris "
    "poem quick brown fox lazy dog cat sat on mat sky why simple words child"
).split()


def write_inputs(workdir: str | Path, *, num_pairs: int = 13, seed: int = 0) -> tuple[Path, Path]:
    """A tiny SentencePiece model and a pairs JSONL of ``num_pairs`` pairs (two per prompt).

    Returns:
        ``(tokenizer_path, pairs_path)`` under ``workdir``.
    """
    from megatron_scir.data.jsonl import write_records
    from megatron_scir.testing.tokenizers import train_tiny_sentencepiece

    workdir = Path(workdir)
    tokenizer_path = train_tiny_sentencepiece(workdir / "tokenizer")
    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    rows = [
        {
            "pair_id": f"p{i // 2}:{i % 2}",
            "prompt_id": f"p{i // 2}",
            "prompt": f"question {i // 2}: {words(4)}",
            "response_1": words(rng.randint(1, 8)),
            "response_2": words(rng.randint(1, 8)),
        }
        for i in range(num_pairs)
    ]
    pairs_path = workdir / "pairs.jsonl"
    write_records(pairs_path, rows)
    return tokenizer_path, pairs_path


def tie_config(tokenizer_path: str | Path, overrides: list[str]) -> Config:
    """The ``tiny`` preset with short budgets, the tokenizer, and ``overrides``."""
    return load_config("tiny", [*TINY_BUDGETS, f"data.tokenizer_path={tokenizer_path}", *overrides])


def check_ties(runtime, cfg: Config, pairs_path: Path, out_path: Path) -> dict[str, Any]:
    """Reference pass, then one training forward/backward on its file; what the step saw.

    Collective (every rank). Returns ``{"summary", "metrics", "pairs_checked",
    "policy_mismatches", "judge_mismatches", "max_abs_policy_diff"}``; the counts are this
    rank's (non-zero only on the last pipeline stage).
    """
    from megatron_scir.data import build_tokenizer
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.ddp import wrap_with_ddp
    from megatron_scir.recipe import ModelSource, reference_stage

    tokenizer = build_tokenizer(cfg.data)
    torch.manual_seed(SEED)
    chunks = wrap_with_ddp(build_model_chunks(cfg), cfg)
    summary = reference_stage(
        runtime,
        cfg,
        tokenizer,
        model=ModelSource("random-init", seed=SEED),
        pairs=pairs_path,
        out=out_path,
        chunks=chunks,
    )
    metrics, captured, pairs = _training_step(runtime, chunks, cfg, tokenizer, out_path)
    return {"summary": summary, "metrics": metrics, **_compare(cfg, captured, pairs)}


def _training_step(runtime, chunks, cfg: Config, tokenizer, pairs_path: Path):
    """Every training step of the file's first epoch through the training step, as the trainer
    runs them (one schedule call per optimizer step), without optimizer updates (weights = M_t).
    """
    from megatron_scir.data import ScirDataModule
    from megatron_scir.data.layout import MicroBatchLayout
    from megatron_scir.parallel.reductions import step_metrics
    from megatron_scir.training.forward_step import make_forward_step
    from megatron_scir.training.schedule import run_schedule

    layout = MicroBatchLayout.for_training(cfg)
    dm = ScirDataModule(
        cfg,
        tokenizer,
        layout=layout,
        dp_rank=runtime.dp_rank,
        dp_size=runtime.dp_size,
        train_path=pairs_path,
    )
    dm.setup("fit")
    candidate_ids = dm.verdict_token_ids if layout.with_judge else None
    forward_step = make_forward_step(cfg, layout, candidate_ids, tp_group=runtime.tp_group)
    captured: list[tuple[dict, tuple]] = []

    def capturing_step(data_iterator, model):
        batch = next(data_iterator)
        output, loss_func = forward_step(iter([batch]), model)

        def capturing_loss(output):
            captured.append((batch, tuple(None if t is None else t.detach() for t in output)))
            return loss_func(output)

        return output, capturing_loss

    micro_batches = list(dm.train_dataloader())
    per_step = cfg.train.global_batch_size // (cfg.train.micro_batch_size * runtime.dp_size)
    losses = []
    for start in range(0, len(micro_batches), per_step):
        step_batches = micro_batches[start : start + per_step]
        losses += run_schedule(capturing_step, chunks, step_batches, forward_only=False)
    metrics = step_metrics(
        losses,
        dp_group=runtime.dp_group,
        pp_group=runtime.pp_group,
        is_last_stage=runtime.is_last_stage(),
    )
    return metrics, captured, dm.pairs


def _compare(cfg: Config, captured, pairs) -> dict[str, Any]:
    """Count pairs whose training-step values differ from the stored reference values."""
    from megatron_scir.data.judges import judge_format

    k, judge = cfg.train.micro_batch_size, judge_format(cfg.judge)
    checked = policy_mismatches = judge_mismatches = 0
    max_diff = 0.0
    for batch, (policy_logps, candidate_logps) in captured:
        ref = batch["ref_logps"].to(policy_logps.device)
        diff = (policy_logps.float() - ref).abs().view(2, k).amax(dim=0)
        policy_mismatches += int((diff != 0).sum())
        max_diff = max(max_diff, float(diff.max()))
        checked += k
        if candidate_logps is None:
            continue
        judge_12, judge_21 = judge.log_odds(candidate_logps, k)
        for i, index in enumerate(batch["pair_indices"].tolist()):
            pair = pairs[index]
            stored = (pair.ref_judge_logits_12, pair.ref_judge_logits_21)
            now = (judge_12[i].item(), None if judge_21 is None else judge_21[i].item())
            judge_mismatches += stored != now
    return {
        "pairs_checked": checked,
        "policy_mismatches": policy_mismatches,
        "judge_mismatches": judge_mismatches,
        "max_abs_policy_diff": max_diff,
    }


def tie_failures(result: dict[str, Any], *, is_last_stage: bool) -> list[str]:
    """What breaks the exact-tie contract in ``check_ties``'s result (empty: it holds)."""
    failures = []
    metrics = result["metrics"]
    if metrics.get("scir/ties") != 1.0:
        failures.append(f"scir/ties = {metrics.get('scir/ties')}, expected 1")
    if metrics.get(CONSISTENCY_RATE) != 0.0:
        failures.append(f"{CONSISTENCY_RATE} = {metrics.get(CONSISTENCY_RATE)}")
    if is_last_stage:
        if result["pairs_checked"] == 0:
            failures.append("the training step checked no pair")
        if result["policy_mismatches"] or result["judge_mismatches"]:
            failures.append(
                f"{result['policy_mismatches']} policy and {result['judge_mismatches']} judge "
                f"values differ from the reference file (max |Δ logp| "
                f"{result['max_abs_policy_diff']:.3g})"
            )
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="config overrides (a.b=c)")
    parser.add_argument("--impls", default=None, help="model.transformer_impl values, comma-sep")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(
            "gpu_check_ties.py: error: no CUDA device here. This check runs the bf16 tie check "
            "on a GPU machine; on CPU, run tests/training/test_reference.py instead.",
            file=sys.stderr,
        )
        return 2
    from megatron_scir.models.gpt import te_available
    from megatron_scir.parallel.runtime import parallel_world

    impls = args.impls.split(",") if args.impls else ["local", "sdpa"] + ["te"] * te_available()
    parallel = load_config("tiny", [*TINY_BUDGETS, *args.overrides]).parallel
    failed = False
    with parallel_world(parallel, seed=SEED) as runtime:
        workdir = _shared_workdir(runtime)
        tokenizer_path, pairs_path = _shared(runtime, lambda: write_inputs(workdir))
        for impl in impls:
            overrides = ["model.params_dtype=bfloat16", f"model.transformer_impl={impl}"]
            cfg = tie_config(tokenizer_path, [*overrides, *args.overrides])
            result = check_ties(runtime, cfg, pairs_path, workdir / f"ref_{impl}.jsonl")
            failures = tie_failures(result, is_last_stage=runtime.is_last_stage())
            failed |= bool(failures)
            report = {k: v for k, v in result.items() if k != "summary"}
            print(json.dumps({"rank": runtime.rank, "impl": impl, **report}), flush=True)
            for failure in failures:
                print(f"rank {runtime.rank} impl {impl}: FAILED: {failure}", flush=True)
        rank = runtime.rank
    print(f"rank {rank}: {'FAILED' if failed else 'ok: exact ties at step 0'} ({workdir})")
    return 1 if failed else 0


def _shared_workdir(runtime) -> Path:
    """One scratch directory for all ranks (one machine), made by rank 0."""
    return _shared(runtime, lambda: Path(tempfile.mkdtemp(prefix="scir-ties-")))


def _shared(runtime, make):
    """``make()`` on rank 0, its result broadcast to every rank."""
    import torch.distributed as dist

    value: list[Any] = [make() if runtime.is_rank_zero else None]
    dist.broadcast_object_list(value, src=0)
    return value[0]


if __name__ == "__main__":
    sys.exit(main())
