"""``scir evaluate``'s reward-model accuracies equal a direct computation with Hugging Face
``transformers`` on the exported checkpoints (token by token, no micro-batches, no reference
pass), and the command reports them."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from megatron_scir.tasks.arithmetic import PAIRWISE_JUDGE_TEMPLATE, write_task_files
from megatron_scir.testing.distributed import run_distributed

OVERRIDES = [
    "data.max_prompt_length=24",
    "data.max_response_length=8",
    "data.judge_max_length=64",
    "scir.beta=0.5",
    "model.init_method_std=0.5",  # random models with opinions: P_G far from ½
    f"judge.pairwise_template={PAIRWISE_JUDGE_TEMPLATE}",
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    task = write_task_files(root / "task", num_sft=8, num_judge=8, num_prompts=8)
    pairs = root / "pairs.jsonl"
    lines = task.eval_pairs.read_text().splitlines()[:24]
    pairs.write_text("\n".join(lines) + "\n")
    overrides = [*OVERRIDES, f"data.tokenizer_path={task.tokenizer}"]
    (accuracy,) = run_distributed(_evaluate, 1, args=(overrides, str(root), str(pairs)))
    return root, task, pairs, overrides, accuracy


def _evaluate(rank, world_size, overrides, root, pairs):
    from pathlib import Path

    from megatron_scir.checkpoint import save_checkpoint
    from megatron_scir.config import load_config
    from megatron_scir.data import build_tokenizer
    from megatron_scir.iteration import reward_accuracy
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.runtime import parallel_world

    cfg = load_config("tiny", overrides)
    root = Path(root)
    with parallel_world(cfg.parallel) as runtime:
        for seed in (1, 2):  # two different random models: the policy and the reference
            runtime.reseed(seed)
            chunks = build_model_chunks(cfg)
            asset = [cfg.data.tokenizer_path]
            save_checkpoint(root / f"m{seed}", chunks, cfg, iteration=0, step=0, assets=asset)
        from megatron_scir.recipe import ModelSource

        return reward_accuracy(
            runtime, cfg, build_tokenizer(cfg.data), pairs,
            policy=ModelSource.checkpoint(root / "m1"),
            reference=ModelSource.checkpoint(root / "m2"), work_dir=root / "work",
        )


def _direct(root, task, pairs, overrides):
    """Log-probs and judge log-odds of every pair with transformers, then the accuracies."""
    from transformers import LlamaForCausalLM

    from megatron_scir.config import load_config
    from megatron_scir.convert import export_to_hf
    from megatron_scir.data import ChatFormat, build_tokenizer, judge_format, read_records
    from megatron_scir.losses.bernoulli import Bernoulli
    from megatron_scir.losses.selection import select_consistent

    cfg = load_config("tiny", overrides)
    chat = ChatFormat("plain", build_tokenizer(cfg.data))
    judge = judge_format(cfg.judge)
    verdicts = judge.candidate_ids(chat)
    models = {}
    for name in ("m1", "m2"):
        export_to_hf(root / name, root / f"hf_{name}", progress=False)
        models[name] = LlamaForCausalLM.from_pretrained(root / f"hf_{name}").eval()

    def logits(model, ids):
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].double().log_softmax(-1)

    def response_logp(name, prompt, response):
        prompt_ids = chat.encode(chat.render(prompt))
        ids = chat.encode(chat.render(prompt) + response) + [chat.tokenizer.eos_id]
        assert ids[: len(prompt_ids)] == prompt_ids
        logp = logits(models[name], ids)
        return sum(logp[i - 1, ids[i]].item() for i in range(len(prompt_ids), len(ids)))

    def log_odds(first, second, prompt):
        logp = logits(models["m1"], chat.encode(judge.judge_text(chat, prompt, first, second)))
        return logp[-1, verdicts[0]].item() - logp[-1, verdicts[1]].item()

    records, _ = read_records(pairs, "pairs")
    out = {"judge": [], "implicit": [], "first": [], "p_i": [], "p_g": []}
    beta = cfg.scir.beta
    for r in records:
        first_better = r.label == 1
        delta = sum(
            sign * (response_logp("m1", r.prompt, y) - response_logp("m2", r.prompt, y))
            for sign, y in ((1, r.response_1), (-1, r.response_2))
        )
        p_i = 1 / (1 + math.exp(-beta * delta))
        l12 = log_odds(r.response_1, r.response_2, r.prompt)
        l21 = log_odds(r.response_2, r.response_1, r.prompt)
        p_g = 0.5 * (1 / (1 + math.exp(-l12)) + 1 / (1 + math.exp(l21)))
        p_first = 1 / (1 + math.exp(-l12))
        out["implicit"].append(_score(p_i, first_better, cfg.scir.tie_eps))
        out["judge"].append(_score(p_g, first_better, cfg.scir.tie_eps))
        out["first"].append(_score(p_first, first_better, cfg.scir.tie_eps))
        out["p_i"].append(p_i)
        out["p_g"].append(p_g)
    p_i, p_g = torch.tensor(out["p_i"]), torch.tensor(out["p_g"])
    selection = select_consistent(
        Bernoulli(p_i.log(), (1 - p_i).log()), Bernoulli(p_g.log(), (1 - p_g).log()),
        margin=cfg.scir.margin, tie_eps=cfg.scir.tie_eps,
    )
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "implicit_accuracy": mean(out["implicit"]),
        "judge_accuracy": mean(out["judge"]),
        "judge_accuracy_first_shown": mean(out["first"]),
        "consistency_rate": selection.consistent.double().mean().item(),
        "p_i": p_i,
        "p_g": p_g,
    }


def _score(p: float, first_better: bool, tie_eps: float) -> float:
    """1 for the right side, 0 for the wrong one, ½ within ``tie_eps`` of ½ (no opinion)."""
    if abs(p - 0.5) <= tie_eps:
        return 0.5
    return float((p > 0.5) == first_better)


def test_the_accuracies_equal_a_direct_computation_with_transformers(setup):
    root, task, pairs, overrides, accuracy = setup
    direct = _direct(root, task, pairs, overrides)
    assert accuracy.num_pairs == 24
    # no prediction is within float noise of the tie boundary (the comparison is not luck);
    # the debiased judge of a random model is often a tie: its position bias cancels out
    tie_eps = 1e-4
    for p in (direct["p_i"], direct["p_g"]):
        assert ((p - 0.5).abs() - tie_eps).abs().min() > 1e-6
    for key in ("implicit_accuracy", "judge_accuracy", "judge_accuracy_first_shown"):
        assert getattr(accuracy, key) == pytest.approx(direct[key], abs=1e-12), key
    assert accuracy.consistency_rate == pytest.approx(direct["consistency_rate"], abs=1e-12)
    assert 0 < accuracy.consistency_rate < 1


def test_the_command_prints_the_accuracies_and_refuses_unlabelled_pairs(setup, tmp_path):
    root, task, pairs, overrides, accuracy = setup
    base = [sys.executable, "-m", "megatron_scir.cli", "evaluate", "--config", "tiny"]
    cmd = [*base, "--ckpt", str(root / "m1"), "--ref-ckpt", str(root / "m2"), "--pairs",
           str(pairs), "--out-dir", str(tmp_path / "work"), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["judge_accuracy"] == accuracy.judge_accuracy
    assert report["implicit_accuracy"] == accuracy.implicit_accuracy

    unlabelled = tmp_path / "unlabelled.jsonl"
    rows = [json.loads(line) for line in pairs.read_text().splitlines()[:3]]
    rows[1].pop("label")
    unlabelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [*base, "--ckpt", str(root / "m1"), "--pairs", str(unlabelled), *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"{unlabelled}:2" in done.stderr and "no label" in done.stderr
