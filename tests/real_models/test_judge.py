"""The judge on a real byte-level BPE tokenizer and model: SmolLM2-135M-Instruct (ChatML).

- The verdict and score ids resolve in context to single distinct tokens after ChatML's
  ``<|im_start|>assistant\\n`` (the start-up check, ``judge_format(cfg.judge).candidate_ids``),
  also for the word-initial variants (" A" is one token "ĠA"); a verdict prefix ending in a space,
  which byte-level BPE merges into the verdict, fails naming the override values that work.
- ``scir evaluate``'s judge log-odds (the reference pass, after ``scir convert hf-to-mcore``)
  equal transformers' log p(A) − log p(B) on the same judge text within 1e-4, both orders; the
  pass's recorded verdict mass and position consistency equal transformers' too.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_scir.config import JudgeConfig, load_config
from megatron_scir.config.judge_templates import JUDGE_SETTINGS
from megatron_scir.data import ChatFormat, SingleTokenError
from megatron_scir.data.judges import judge_format
from megatron_scir.data.tokenizer import HFTokenizer

pytestmark = pytest.mark.real_model

SCIR = [sys.executable, "-m", "megatron_scir.cli"]
ASSISTANT_HEADER = "<|im_start|>assistant\n"
PAIRS = (  # (prompt, response_1, response_2, label)
    ("What is the capital of France?", "The capital of France is Paris.",
     "The capital of France is Berlin.", 1),
    ("How many legs does a spider have?", "A spider has six legs.", "A spider has eight legs.", 2),
    ("What is 7 times 8?", "7 times 8 is 56.", "7 times 8 is 54.", 1),
    ("Who wrote Romeo and Juliet?", "Charles Dickens.", "William Shakespeare.", 2),
)
BUDGETS = ["data.max_prompt_length=64", "data.max_response_length=32", "data.judge_max_length=320"]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def chat(smollm2_dir: Path) -> ChatFormat:
    return ChatFormat("tokenizer", HFTokenizer(smollm2_dir))


@pytest.mark.parametrize(
    ("judge", "pieces"),
    [
        (JudgeConfig(), ["A", "B"]),
        (JudgeConfig(kind="pointwise"), ["0", "1", "2", "3", "4", "5"]),
        (JudgeConfig(verdict_texts=[" A", " B"]), ["ĠA", "ĠB"]),
        *[(JudgeConfig(**values), None) for values in JUDGE_SETTINGS.values()],
    ],
    ids=["pairwise", "pointwise", "leading-space", *JUDGE_SETTINGS],
)
def test_verdict_ids_are_single_distinct_tokens_after_the_chatml_assistant_header(
    chat, judge, pieces
):
    fmt = judge_format(judge)
    ids = fmt.candidate_ids(chat)
    tok = chat.tokenizer
    context = fmt.probe_text(chat)
    assert context.endswith(ASSISTANT_HEADER + judge.verdict_prefix)
    assert context.startswith(tok.bos_text)  # ChatML spells <|im_start|>: no second BOS
    assert len(set(ids)) == len(ids) == len(fmt.candidate_texts)
    if pieces is not None:
        assert tok.pieces(ids) == pieces
    for text, token in zip(fmt.candidate_texts, ids, strict=True):
        assert chat.encode(context + text) == chat.encode(context) + [token]
        assert tok.decode(chat.encode(context) + [token]).endswith(judge.verdict_prefix + text)
        assert token not in tok.stop_ids and token != tok.unk_id


def test_a_verdict_prefix_ending_in_a_space_fails_naming_the_override_values_that_work(chat):
    with pytest.raises(SingleTokenError) as err:
        judge_format(JudgeConfig(verdict_prefix="Verdict: ")).candidate_ids(chat)
    message = str(err.value)
    assert "pieces ['ĠA']" in message  # the space merged into the verdict
    fix = message.rsplit("put the space into the texts instead: ", 1)[1]
    assert fix == """judge.verdict_prefix=Verdict: 'judge.verdict_texts=[" A", " B"]'"""
    judge = load_config(None, shlex.split(fix)).judge
    assert chat.tokenizer.pieces(judge_format(judge).candidate_ids(chat)) == ["ĠA", "ĠB"]


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{what} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _transformers_judge(smollm2_dir: Path, judge: JudgeConfig) -> dict[str, torch.Tensor]:
    """ℓ12, ℓ21 and the verdict mass of every pair with transformers alone: the HF tokenizer's
    own chat template, its ids of "A" and "B", one sequence at a time, float64 log-softmax."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    verdicts = [tokenizer(t, add_special_tokens=False).input_ids for t in judge.verdict_texts]
    assert all(len(v) == 1 for v in verdicts)
    fmt = judge_format(judge)
    out = {"l12": [], "l21": [], "mass": []}
    for prompt, y1, y2, _ in PAIRS:
        for key, (first, second) in (("l12", (y1, y2)), ("l21", (y2, y1))):
            messages = [{"role": "user", "content": fmt.render(prompt, first, second)}]
            text = tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
            ids = tokenizer(text + judge.verdict_prefix, add_special_tokens=False).input_ids
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, -1]
            logp = logits.double().log_softmax(-1)[[v[0] for v in verdicts]]
            out[key].append((logp[0] - logp[1]).item())
            out["mass"].append(logp.exp().sum().item())
    return {key: torch.tensor(values, dtype=torch.float64) for key, values in out.items()}


def test_scir_evaluate_judge_log_odds_equal_transformers(tmp_path, smollm2_dir, record_property):
    ckpt, pairs, work = tmp_path / "ckpt", tmp_path / "pairs.jsonl", tmp_path / "eval"
    pairs.write_text("".join(
        json.dumps({"pair_id": f"p{i}", "prompt_id": f"q{i}", "prompt": p, "response_1": y1,
                    "response_2": y2, "label": label}) + "\n"
        for i, (p, y1, y2, label) in enumerate(PAIRS)
    ))
    start = time.perf_counter()
    _run([*SCIR, "convert", "hf-to-mcore", "--hf-dir", str(smollm2_dir), "--out", str(ckpt),
          "--no-progress"], "scir convert hf-to-mcore")
    convert_s = time.perf_counter() - start
    done = _run([*SCIR, "evaluate", "--ckpt", str(ckpt), "--pairs", str(pairs), "--out-dir",
                 str(work), "data.chat_template=tokenizer", *BUDGETS], "scir evaluate")
    evaluate_s = time.perf_counter() - start - convert_s
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["num_pairs"] == len(PAIRS)

    records = [json.loads(line) for line in (work / "policy.jsonl").read_text().splitlines()]
    got_12 = torch.tensor([r["ref_judge_logits_12"] for r in records], dtype=torch.float64)
    got_21 = torch.tensor([r["ref_judge_logits_21"] for r in records], dtype=torch.float64)
    summary = json.loads((work / "policy.jsonl.inputs.json").read_text())["summary"]
    expected = _transformers_judge(smollm2_dir, JudgeConfig())

    diff = max((got_12 - expected["l12"]).abs().max(), (got_21 - expected["l21"]).abs().max())
    record_property("max_abs_log_odds_diff", f"{diff.item():.2e}")
    print(
        f"\nSmolLM2 judge: scir evaluate vs transformers, max |Δℓ| {diff.item():.2e} over "
        f"{2 * len(PAIRS)} judge rows (ℓ12 {got_12.tolist()}, ℓ21 {got_21.tolist()}); "
        f"verdict mass {summary['verdict_mass']:.4f}; convert {convert_s:.1f} s, "
        f"evaluate {evaluate_s:.1f} s"
    )
    assert diff < TOLERANCE
    assert expected["l12"].abs().min() > 10 * TOLERANCE  # the signs below are not float noise
    assert expected["l21"].abs().min() > 10 * TOLERANCE
    mass = expected["mass"].view(len(PAIRS), 2).mean(-1).mean().item()
    assert summary["verdict_mass"] == pytest.approx(mass, abs=TOLERANCE)
    agree = (torch.sign(expected["l12"]) * torch.sign(-expected["l21"]) > 0).double().mean()
    assert summary["position_consistency"] == agree.item()
