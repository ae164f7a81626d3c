"""What the self-rewarding methods trained on, per method and iteration, from a ``scir demo`` run.

    .venv/bin/python scripts/analyze_study.py runs/demo        # or the --full study's --out
    .venv/bin/python scripts/analyze_study.py runs/study --max-operand 10   # --model smollm2

For every iteration's pairs (``iter_t/reference/pairs.ref.jsonl``: the pairs with M_t's judge)
it grades both responses with the task's grader and prints, as mean ± std over seeds:

- informative: fraction of pairs with exactly one correct response (the others teach nothing
  about correctness: both right or both wrong);
- judge right: on informative pairs, fraction where M_t's debiased judge P_G prefers the correct
  response (this is what SRLM's labels are; SCIR starts from these judgements);
- judge sure+right / sure+wrong: the same with |P_G − ½| > 0.1;
- misconceived share: fraction of informative pairs that are on misconceived facts (the only
  facts greedy answers can still gain on), and judge right on those;
- misconception picked: fraction of informative pairs on misconceived facts where the wrong
  response is the fact's seed misconception;
- train consistency: SCIR's consistency rate of M_{t+1} on these pairs after training.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from megatron_scir.tasks.arithmetic import grade, misconceptions, parse_operands

TASK = {"max_operand": 5}  # scir demo's task (megatron_scir/cli/demo.py TASK; smollm2: 10)


def p_judge(record: dict) -> float:
    """P_G with mean_prob debiasing (the demo's default); NaN where the reference pass did not
    read the judge (``dpo`` mode)."""
    if record.get("ref_judge_logits_12") is None:
        return math.nan
    s12 = 1 / (1 + math.exp(-record["ref_judge_logits_12"]))
    s21 = 1 / (1 + math.exp(record["ref_judge_logits_21"]))
    return 0.5 * (s12 + s21)


def analyze(iteration_dir: Path, seed: int, max_operand: int) -> dict[str, float]:
    wrong_answers = misconceptions(seed=seed, max_operand=max_operand)
    pairs = [
        json.loads(line)
        for line in (iteration_dir / "reference" / "pairs.ref.jsonl").read_text().splitlines()
        if line.strip()
    ]
    informative = right = sure_right = sure_wrong = on_misconceived = picked = right_mis = 0
    for p in pairs:
        g1, g2 = grade(p["prompt"], p["response_1"]), grade(p["prompt"], p["response_2"])
        if g1 == g2:
            continue
        informative += 1
        pg = p_judge(p)
        ok = (pg > 0.5) == (g1 > g2) if not math.isnan(pg) else math.nan
        sure = not math.isnan(pg) and abs(pg - 0.5) > 0.1
        right += ok
        if sure:
            sure_right += ok
            sure_wrong += not ok
        fact = parse_operands(p["prompt"])
        if fact in wrong_answers:
            on_misconceived += 1
            right_mis += ok
            wrong = p["response_2"] if g1 > g2 else p["response_1"]
            picked += wrong.strip() == str(wrong_answers[fact])
    n = max(informative, 1)
    judged = not math.isnan(right)  # dpo pairs carry no judge
    if not judged:
        sure_right = sure_wrong = right_mis = math.nan
    marker = json.loads((iteration_dir / "train" / "stage.json").read_text())
    return {
        "informative": informative / max(len(pairs), 1),
        "judge right": right / n,
        "judge sure+right": sure_right / n,
        "judge sure+wrong": sure_wrong / n,
        "misconceived share": on_misconceived / n,
        "judge right (misconceived)": right_mis / max(on_misconceived, 1),
        "misconception picked": picked / max(on_misconceived, 1),
        "train consistency": marker["metrics"].get("consistency_train_end", math.nan),
    }


def main(study: Path, max_operand: int = TASK["max_operand"]) -> None:
    rows: dict[tuple[int, str], list[dict[str, float]]] = defaultdict(list)
    for seed_dir in sorted(study.glob("seed*")):
        seed = int(seed_dir.name[4:])
        for method_dir in sorted(p for p in seed_dir.iterdir() if (p / "iter_1").is_dir()):
            for it_dir in sorted(method_dir.glob("iter_*")):
                t = int(it_dir.name[5:])
                if t >= 1 and (it_dir / "train" / "stage.json").is_file():
                    rows[t, method_dir.name].append(analyze(it_dir, seed, max_operand))
    if not rows:
        sys.exit(
            f"analyze_study: no finished iteration under {study} (looked for "
            "seed*/<method>/iter_<t>/train/stage.json; pass a scir demo --out folder)"
        )
    keys = list(next(iter(rows.values()))[0])
    print("| iteration | method | " + " | ".join(keys) + " |")
    print("|---:|:---|" + "---:|" * len(keys))
    for (t, method), values in sorted(rows.items()):
        cells = []
        for k in keys:
            xs = [v[k] for v in values if not math.isnan(v[k])]
            mean = statistics.fmean(xs) if xs else math.nan
            std = statistics.stdev(xs) if len(xs) > 1 else 0.0
            cells.append("–" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}")
        print(f"| {t} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    args = sys.argv[1:]
    if {"-h", "--help"} & set(args):
        print(__doc__)
        sys.exit(0)
    operand = TASK["max_operand"]
    if "--max-operand" in args:
        at = args.index("--max-operand")
        operand = int(args[at + 1])
        del args[at : at + 2]
    main(Path(args[0] if args else "runs/demo"), operand)
