"""``scir demo``: SCIR vs the SRLM baseline in miniature, on CPU, on a task with an oracle.

    scir demo                          # ~5 min on 2 cores: 1 seed, 2 iterations, 3 methods
    scir demo --full                   # 3 seeds, 3 iterations, 4 methods, a larger budget
    scir demo --out runs/demo train.lr=2e-4      # any config override goes to every run
    scir demo --report --out runs/study          # the report of every finished run, nothing run

The task (:mod:`megatron_scir.tasks.arithmetic`): sums of operands 0..5, a closed world of 36
facts. The seed SFT data teaches 30 % of them wrong (a fixed wrong answer each), the seed judge
data knows them but gives 20 % wrong verdicts. A program grades every answer, so the study can
measure what a self-rewarding model can only estimate.

Every seed: write the task's files and tokenizer, build the ``tiny`` Llama, run seed SFT
(M_0 → M_1) once, then for t = 1..T run iteration t of every method from the same M_1:

- ``scir``: SCIR (``scir.consistency_grad=both``, the default);
- ``scir-ct``: SCIR with ``scir.consistency_grad=confident_teacher`` (``--full``);
- ``srlm``: the Self-Rewarding LM baseline (labels fixed by M_t's judge);
- ``dpo-oracle``: DPO on the grader's labels (the upper reference).

After each iteration it prints one table (oracle accuracy of greedy answers, judge and
implicit-reward accuracy on labelled pairs, their consistency rate, the pairs trained on);
at the end it writes ``results.jsonl``, ``results.md`` (mean ± std over seeds) and
``results.png`` under ``--out``. Each method's run is an ordinary ``scir iterate`` run
directory (``<out>/seed<s>/<method>``): rerunning the demo continues where it stopped.
``--report`` rebuilds those files from every finished iteration under ``--out`` (the stage
markers), with each method's paired difference from SRLM and from SCIR: one report for a study
run in several sittings or a few methods at a time.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

from megatron_scir.config import load_config, validate
from megatron_scir.config.validate import GENERATION, SELF_REWARDING, TRAINING

HELP = "the CPU study: seed SFT, then SCIR vs SRLM (vs oracle DPO) iterations on a graded task"

METHODS = {
    "scir": ("scir.mode=scir", "scir.consistency_grad=both"),
    "scir-ct": ("scir.mode=scir", "scir.consistency_grad=confident_teacher"),
    "srlm": ("scir.mode=srlm",),
    "dpo-oracle": ("scir.mode=dpo",),
    # SCIR's parts, one at a time (the real-model study, docs/results.md)
    "scir-no-cons": ("scir.mode=scir", "scir.consistency_weight=0"),
    "scir-no-conf": ("scir.mode=scir", "scir.confidence_weight=0"),
    "scir-margin": ("scir.mode=scir", "scir.margin=0.1"),
    "scir-all": ("scir.mode=scir", "scir.selection=all"),
    "scir-len-norm": ("scir.mode=scir", "scir.length_normalize=true"),
    # the two that helped, together
    "scir-no-cons-len-norm": (
        "scir.mode=scir", "scir.consistency_weight=0", "scir.length_normalize=true"
    ),
    # the implicit reward against M_{t-1} (M_0, the model seed SFT started from, at t = 1)
    "scir-prev": ("scir.mode=scir", "scir.implicit_reference=previous"),
}
QUICK = {"seeds": (0,), "iterations": 2, "methods": ("scir", "srlm", "dpo-oracle")}
FULL = {"seeds": (0, 1, 2), "iterations": 3, "methods": ("scir", "scir-ct", "srlm", "dpo-oracle")}
# The tiny model and the budgets of the study; anything here can be overridden on the command
# line. Short sequences: a prompt is ~17 tokens, an answer 1-2 digits + EOS, a judge row ~43.
SETTINGS = (
    "data.max_prompt_length=24",
    "data.max_response_length=8",
    "data.judge_max_length=64",
    "generation.max_new_tokens=8",
    "generation.temperature=1.0",
    "generation.num_responses=8",
    "generation.max_batch_size=64",
    "generation.chunk_size=64",
    "train.micro_batch_size=32",
    "train.global_batch_size=64",
    "train.sft_lr=3e-3",
    "train.sft_epochs=20",
    "train.lr=5e-4",
    "train.epochs=4",
    "train.lr_warmup_iters=10",
    "iteration.prompts_per_iteration=192",
    "iteration.grader=megatron_scir.tasks.arithmetic:grade",
)
FULL_SETTINGS = ("iteration.prompts_per_iteration=256",)
# The task: 36 facts (operands 0..5), 30 % of them misconceived by the seed SFT data; the seed
# judge data (twice the SFT data: a judge takes longer to learn) has 20 % wrong verdicts.
TASK = {"max_operand": 5, "num_sft": 720, "num_judge": 1440, "num_prompts": 1024}
# The real-model study (``--model smollm2``): SmolLM2-135M-Instruct (M_0) from its Hugging Face
# folder under the ``chat`` preset, the same task with operands 0..10 (121 facts: one evaluation
# item is 0.83 % of an accuracy) and budgets sized for two CPU cores. A ChatML prompt is ~40
# tokens (SmolLM2's system prompt included), an answer 1-2 digits + <|im_end|>, a judge row ~80.
SMOLLM2_SETTINGS = (
    "data.max_prompt_length=64",
    "data.max_response_length=16",
    "data.judge_max_length=128",
    "generation.max_new_tokens=12",
    "generation.temperature=1.0",
    "generation.top_p=1.0",
    "generation.num_responses=4",
    "generation.max_batch_size=64",
    "train.micro_batch_size=8",
    "train.global_batch_size=16",
    "train.sft_lr=2e-5",
    "train.sft_epochs=2",
    "train.lr=5e-6",
    "train.epochs=2",
    "train.lr_warmup_iters=2",
    "iteration.prompts_per_iteration=48",
    "iteration.grader=megatron_scir.tasks.arithmetic:grade",
)
SMOLLM2_TASK = {"max_operand": 10, "num_sft": 242, "num_judge": 484, "num_prompts": 576}
SMOLLM2_QUICK = {"seeds": (0,), "iterations": 1, "methods": ("scir", "srlm", "dpo-oracle")}
SMOLLM2_FULL = {
    "seeds": (0, 1, 2),
    "iterations": 3,
    "methods": (
        *("scir", "srlm", "dpo-oracle", "scir-prev"),
        *("scir-ct", "scir-all", "scir-len-norm", "scir-no-cons", "scir-no-conf", "scir-margin"),
        "scir-no-cons-len-norm",
    ),
}
TABLE = (
    ("method", "method"),
    ("oracle_accuracy", "oracle acc"),
    ("judge_accuracy", "judge acc"),
    ("implicit_accuracy", "implicit acc"),
    ("consistency_rate", "consistency"),
    ("pairs_used", "pairs used"),
    ("pairs_built", "pairs"),
)
METRICS = (
    "oracle_accuracy", "judge_accuracy", "implicit_accuracy", "consistency_rate", "pairs_used"
)
# results.md also reports these (issue 23's metrics: agreement at the start and end of training,
# response length, the judge's verdict mass and position consistency on the iteration's pairs)
DETAIL = (
    ("consistency_train_start", "consistency start"),
    ("consistency_train_end", "consistency end"),
    ("response_tokens", "resp tokens"),
    ("reference_verdict_mass", "verdict mass"),
    ("reference_judge_position_consistency", "judge pos. consistency"),
)
PLOT = (
    ("oracle_accuracy", "oracle accuracy (greedy)"),
    ("judge_accuracy", "judge accuracy"),
    ("implicit_accuracy", "implicit-reward accuracy"),
    ("consistency_rate", "IRM-GRM consistency"),
    ("pairs_used", "pairs trained on"),
    ("pairs_built", "pairs built"),
)


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help=HELP, description=HELP)
    parser.add_argument("--out", default="runs/demo", help="where everything goes")
    parser.add_argument(
        "--model",
        choices=("tiny", "smollm2"),
        default="tiny",
        help="tiny: a 250k-parameter Llama (minutes); smollm2: SmolLM2-135M-Instruct (hours)",
    )
    parser.add_argument("--full", action="store_true", help="3 seeds, 3 iterations, every method")
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default 0; --full 0 1 2)")
    parser.add_argument("--iterations", type=int, help="iterations T (default 2; --full 3)")
    parser.add_argument("--methods", nargs="+", choices=tuple(METHODS), help="methods to run")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the task's size (write_task_files: max_operand, num_sft, num_judge, num_prompts, "
        "misconception_rate, judge_error_rate, ...); repeatable",
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: rewrite results.md/.png/.jsonl under --out from every finished "
        "iteration there (every seed and method found, or those of --seeds/--methods)",
    )
    parser.add_argument("overrides", nargs="*", help="a.b=c config overrides for every run")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.report:
        if args.overrides or args.task or args.full or args.iterations:
            from megatron_scir.config import ConfigError  # lazy: keeps `scir --help` instant

            raise ConfigError(
                "scir demo --report runs nothing: it takes --out, --seeds and --methods only "
                "(drop the overrides, --task, --full and --iterations)"
            )
        return report(Path(args.out), seeds=args.seeds, methods=args.methods, command=_command())
    hf_dir = None
    if args.model == "smollm2":
        from megatron_scir.testing.real_models import smollm2_hf_dir  # lazy: pip, transformers

        hf_dir = smollm2_hf_dir()
        plan = dict(SMOLLM2_FULL if args.full else SMOLLM2_QUICK)
        settings, task = SMOLLM2_SETTINGS, SMOLLM2_TASK
    else:
        plan = dict(FULL if args.full else QUICK)
        settings = SETTINGS + (FULL_SETTINGS if args.full else ())
        task = TASK
    task = {**task, **_task_settings(args.task)}
    plan["seeds"] = tuple(args.seeds or plan["seeds"])
    plan["iterations"] = args.iterations or plan["iterations"]
    plan["methods"] = tuple(args.methods or plan["methods"])
    from megatron_scir.iteration import Preempted  # lazy: keeps `scir --help` instant
    from megatron_scir.training.signals import EXIT_PREEMPTED  # lazy: as above

    try:
        _run(args, hf_dir, plan, settings, task)
    except Preempted as stop:
        print(f"scir demo: {stop}; rerun the same command to continue", flush=True)
        return EXIT_PREEMPTED
    return 0


def _run(args: argparse.Namespace, hf_dir, plan: dict, settings, task: dict) -> None:
    run_study(
        Path(args.out),
        seeds=plan["seeds"],
        iterations=plan["iterations"],
        methods=plan["methods"],
        overrides=settings + tuple(args.overrides),
        task=task,
        hf_dir=hf_dir,
        progress=False if args.no_progress else None,
        command=_command(),
    )


def _command() -> str:
    """The command line as typed (for results.md)."""
    return "scir demo " + " ".join(sys.argv[2:])


def _task_settings(pairs: list[str]) -> dict:
    """``--task KEY=VALUE`` as keyword arguments of ``write_task_files`` (numbers), checked."""
    import inspect

    from megatron_scir.config import ConfigError  # lazy: keeps `scir --help` instant
    from megatron_scir.tasks.arithmetic import write_task_files  # lazy: as above

    known = {
        name: param.default
        for name, param in inspect.signature(write_task_files).parameters.items()
        if param.kind == param.KEYWORD_ONLY and name != "seed"
    }
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in known:
            raise ConfigError(
                f"--task {pair!r}: expected KEY=VALUE with KEY one of {sorted(known)}"
            )
        kind = type(known[key])
        try:
            settings[key] = kind(value)
        except ValueError:
            raise ConfigError(f"--task {pair!r}: {key} takes a {kind.__name__}") from None
    return settings


def run_study(
    out: Path,
    *,
    seeds,
    iterations: int,
    methods,
    overrides=SETTINGS,
    task=TASK,
    hf_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    command: str = "scir demo",
) -> list[dict]:
    """The study, in one process and one parallel world; returns every record.

    ``hf_dir``: M_0 is this Hugging Face folder (its tokenizer and chat template, the ``chat``
    preset); without it, a random ``tiny`` Llama with the task's own tokenizer.
    """
    from megatron_scir.data import build_tokenizer  # lazy: keeps `scir --help` instant
    from megatron_scir.iteration import Preempted, run_iterations  # lazy: as above
    from megatron_scir.iteration.stages import read_marker, stage_dir  # lazy: as above
    from megatron_scir.parallel.runtime import parallel_world  # lazy: as above
    from megatron_scir.recipe.model import load_run_config  # lazy: as above
    from megatron_scir.tasks.arithmetic import (  # lazy: as above
        PAIRWISE_JUDGE_TEMPLATE,
        write_task_files,
    )
    from megatron_scir.training.signals import StopRequest  # lazy: as above

    start = time.perf_counter()
    records: list[dict] = []
    preset = "tiny" if hf_dir is None else "chat"
    uses = (GENERATION, TRAINING, SELF_REWARDING)

    def config(seed: int, task_files, extra, *, start_hf: bool = False):
        settings = [
            f"data.seed_sft={task_files.seed_sft}",
            f"data.seed_judge={task_files.seed_judge}",
            f"data.prompts={task_files.prompts}",
            f"iteration.eval_prompts={task_files.eval_prompts}",
            f"iteration.eval_pairs={task_files.eval_pairs}",
            f"judge.pairwise_template={PAIRWISE_JUDGE_TEMPLATE}",
            f"train.seed={seed}",
            *overrides,
            *extra,
        ]
        if hf_dir is not None:
            # the model section, tokenizer and chat template come from the folder (seed SFT)
            # or from M_1's checkpoint (the methods)
            return load_run_config(
                preset, settings, hf_dir=str(hf_dir) if start_hf else None, uses=uses
            )
        cfg = load_config(preset, [f"data.tokenizer_path={task_files.tokenizer}", *settings])
        validate(cfg, uses=uses)
        return cfg

    parallel = load_config(preset, list(overrides)).parallel
    # one stop request for the whole study: a SIGTERM/SIGUSR1 that reaches a run after its last
    # stage began is not lost when the run returns; checked after every run
    with parallel_world(parallel, seed=seeds[0]) as runtime, StopRequest() as stop:

        def stop_if_asked(what: str) -> None:
            if stop.agreed():
                raise Preempted(f"stopped by {stop.signal_name or 'a signal'} after {what}")

        for seed in seeds:
            base = out / f"seed{seed}"
            task_files = runtime.on_rank_zero(
                partial(write_task_files, base / "task", seed=seed, **task)
            )
            sft_run = [f"iteration.run_dir={base / 'seed_sft'}", "iteration.num_iterations=0"]
            cfg = config(seed, task_files, sft_run, start_hf=True)
            tokenizer = build_tokenizer(cfg.data)
            (m0,) = run_iterations(
                runtime, cfg, tokenizer, hf_dir=None if hf_dir is None else str(hf_dir),
                progress=progress, report=False,
            )
            m0_ckpt, m1 = (
                read_marker(stage_dir(cfg.iteration.run_dir, 0, name))["outputs"]["checkpoint"]
                for name in ("init", "sft")
            )
            stop_if_asked(f"seed {seed}'s seed SFT")
            start_rows = [dict(m0, method=method, seed=seed) for method in methods]
            records.extend(start_rows)
            untrained = m0.get("oracle_accuracy_m0", float("nan"))
            judge = m0.get("judge_accuracy_m0", float("nan"))
            title = (
                f"seed {seed}: M_1 after seed SFT (M_0 before it: oracle acc {untrained:.3f}, "
                f"judge acc {judge:.3f})"
            )
            _print_table(runtime, title, [dict(m0, method="M_1 (seed SFT)")])
            for t in range(1, iterations + 1):
                rows = []
                for method in methods:
                    method_run = [
                        *METHODS[method],
                        f"iteration.run_dir={base / method}",
                        f"checkpoint.load={m1}",
                        "iteration.seed_sft=false",
                        f"iteration.num_iterations={t}",
                    ]
                    if "scir.implicit_reference=previous" in METHODS[method]:
                        method_run.append(f"scir.previous_model={m0_ckpt}")
                    result = run_iterations(
                        runtime,
                        config(seed, task_files, method_run),
                        tokenizer,
                        progress=progress,
                        report=False,
                        evaluate_start=False,
                    )
                    stop_if_asked(f"seed {seed}, {method}, iteration {t}")
                    rows.append(dict(result[t], method=method, seed=seed))
                records.extend(rows)
                _print_table(runtime, f"seed {seed}, iteration {t}", rows)
        model = "tiny" if hf_dir is None else "SmolLM2-135M-Instruct"
        wall = f"wall time {(time.perf_counter() - start) / 60:.1f} min"
        runtime.on_rank_zero(
            lambda: _write_results(out, records, methods, seeds, iterations, command, wall, model)
        )
    return records


def report(out: Path, *, seeds=None, methods=None, command: str = "scir demo --report") -> int:
    """``scir demo --report``: ``results.*`` from every finished iteration under ``out`` (the
    stage markers; nothing is built or run), so a study run in several sittings, or with a few
    methods at a time, gets one report of all of it."""
    from megatron_scir.config import ConfigError  # lazy: keeps `scir --help` instant
    from megatron_scir.iteration.stages import finished_markers, finished_records  # lazy

    seeds = tuple(
        seeds or sorted(int(p.name[4:]) for p in out.glob("seed*") if p.name[4:].isdigit())
    )
    found = [m for m in METHODS if any((out / f"seed{s}" / m).is_dir() for s in seeds)]
    methods = tuple(methods or found)
    records: list[dict] = []
    for seed in seeds:
        base = out / f"seed{seed}"
        start = finished_records(base / "seed_sft")[:1]  # M_1, evaluated once per seed
        runs = {
            m: [r for r in finished_records(base / m) if r["iteration"] > 0] for m in methods
        } if start else {}
        runs = {m: rows for m, rows in runs.items() if rows}
        records += [dict(start[0], method=m, seed=seed) for m in runs]
        for t in range(1, max((len(rows) for rows in runs.values()), default=0) + 1):
            records += [dict(rows[t - 1], method=m, seed=seed) for m, rows in runs.items()
                        if len(rows) >= t]
    if not any(r["iteration"] > 0 for r in records):
        raise ConfigError(
            f"scir demo --report: no finished iteration under {out} (it reads the "
            "seed<N>/seed_sft and seed<N>/<method> run directories an earlier scir demo wrote)"
        )
    seeds = tuple(sorted({r["seed"] for r in records}))
    methods = tuple(m for m in methods if any(r["method"] == m for r in records))
    stage_s = sum(
        float(marker.get("wall_s", 0.0))
        for seed in seeds
        for run in ("seed_sft", *methods)
        for _, marker in finished_markers(out / f"seed{seed}" / run)
    )
    iterations = max(r["iteration"] for r in records)
    wall = f"stage time summed over the runs {stage_s / 3600:.1f} h (report only)"
    _write_results(out, records, methods, seeds, iterations, command, wall, _model(out, seeds))
    return 0


def _model(out: Path, seeds) -> str:
    """The M_0 a demo's runs started from: the Hugging Face folder's name, or ``tiny``."""
    from megatron_scir.iteration.stages import read_marker, stage_dir  # lazy: as above
    from megatron_scir.recipe.model import identity_folder  # lazy: as above

    marker = read_marker(stage_dir(out / f"seed{seeds[0]}" / "seed_sft", 0, "init")) or {}
    folder = identity_folder(str(marker.get("config", {}).get("source") or ""))
    return "tiny" if folder is None else Path(folder).name.removesuffix("-hf")


def _print_table(runtime, title: str, rows) -> None:
    from megatron_scir.iteration.report import format_table  # lazy: keeps `scir --help` instant

    if runtime.is_rank_zero:
        print("\n" + format_table(rows, TABLE, title=title) + "\n", flush=True)


def _write_results(
    out: Path, records, methods, seeds, iterations, command, wall: str, model: str
) -> None:
    """``results.jsonl``, ``results.png`` and ``results.md`` (mean ± std over seeds)."""
    from megatron_scir.data import atomic_open  # lazy: keeps `scir --help` instant
    from megatron_scir.iteration.report import (  # lazy: as above
        aggregate,
        markdown_table,
        plot_iterations,
    )
    from megatron_scir.training.metrics_log import write_jsonl  # lazy: as above

    write_jsonl(out / "results.jsonl", records)
    plot_iterations(
        records, out / "results.png", metrics=PLOT, group="method",
        title=f"SCIR vs SRLM, {model}, arithmetic task ({len(seeds)} seed(s); band: min-max)",
    )
    detail = [(m, header) for m, header in DETAIL if any(m in r for r in records)]
    rows = aggregate(
        records, by=("iteration", "method"), metrics=METRICS + tuple(m for m, _ in detail)
    )
    columns = [("iteration", "iteration"), ("method", "method"), ("n", "seeds")] + [
        (m, header) for m, header in TABLE if m in METRICS
    ] + detail
    text = (
        f"# Demo results\n\nModel: {model}. Command: `{command}`\n\nMachine: {platform.machine()}, "
        f"{_cpus()} CPUs, Python {platform.python_version()}; {wall}; "
        f"seeds {list(seeds)}, {iterations} iterations, methods {', '.join(methods)}.\n\n"
        "Iteration 0 is M_1 after seed SFT (shared by every method).\n\n"
        f"{markdown_table(rows, columns, spread=len(seeds) > 1)}\n\n![curves](results.png)\n"
        f"{_interval_tables(out, seeds, methods, iterations)}"
    )
    with atomic_open(out / "results.md") as fh:
        fh.write(text.encode())
    print(f"scir demo: wrote {out}/results.md and results.png ({wall})", flush=True)


INTERVALS = (("oracle", "oracle acc"), ("judge", "judge acc"), ("implicit", "implicit acc"))
BASELINES = ("srlm", "scir")
"""Each method's paired difference is reported from these (when they ran)."""


def _item_scores(out: Path, seeds, method: str, t: int, key: str):
    """``[seeds, items]`` scores of ``key`` from the evaluate stages' ``item_scores.json``, or
    None when a seed lacks them (a run not finished, an older run)."""
    import json

    from megatron_scir.iteration.evaluate import ITEM_SCORES  # lazy: keeps `scir --help` instant
    from megatron_scir.iteration.stages import stage_dir  # lazy: as above

    rows = []
    for seed in seeds:
        run = out / f"seed{seed}" / ("seed_sft" if t == 0 else method)
        path = stage_dir(run, t, "evaluate") / ITEM_SCORES
        scores = json.loads(path.read_text()).get(key) if path.is_file() else None
        if scores is None:
            return None
        rows.append(scores)
    return rows if len({len(row) for row in rows}) == 1 else None


def _interval_tables(out: Path, seeds, methods, iterations: int) -> str:
    """Markdown: each method's accuracies with 95 % bootstrap intervals over seeds and items,
    and each method's paired difference from SRLM and from SCIR (same seeds, M_1 and items)."""
    from megatron_scir.iteration.statistics import bootstrap_mean  # lazy: keeps --help instant

    lines = [
        "\n## Intervals\n",
        f"Mean over {len(seeds)} seed(s) and the evaluation items, with 95 % bootstrap intervals "
        "(seeds and items resampled together; `megatron_scir.iteration.statistics`).\n",
        "| iteration | method | " + " | ".join(h for _, h in INTERVALS) + " |",
        "|---|---|" + "---|" * len(INTERVALS),
    ]
    for t in range(iterations + 1):
        for method in methods[:1] if t == 0 else methods:
            cells = []
            for key, _ in INTERVALS:
                scores = _item_scores(out, seeds, method, t, key)
                cells.append("-" if scores is None else bootstrap_mean(scores).format())
            name = "M_1 (seed SFT)" if t == 0 else method
            lines.append(f"| {t} | {name} | " + " | ".join(cells) + " |")
    for baseline in BASELINES:
        others = [m for m in methods if m != baseline]
        if baseline in methods and others:
            lines += _paired_table(out, seeds, others, iterations, baseline)
    return "\n".join(lines) + "\n"


def _paired_table(out: Path, seeds, methods, iterations: int, baseline: str) -> list[str]:
    """Markdown rows: each method's paired difference from ``baseline`` (same seeds, same M_1,
    same items, the same bootstrap resamples), oracle and judge accuracy."""
    from megatron_scir.iteration.statistics import paired_difference  # lazy: as above

    lines = [
        f"\nPaired difference from `{baseline}` (method − {baseline}; P = share of "
        "bootstrap replicates in which the method scored higher):\n",
        "| iteration | method | Δ oracle acc | P | Δ judge acc | P |",
        "|---|---|---|---|---|---|",
    ]
    for t in range(1, iterations + 1):
        for method in methods:
            cells = []
            for key in ("oracle", "judge"):
                mine = _item_scores(out, seeds, method, t, key)
                base = _item_scores(out, seeds, baseline, t, key)
                if mine is None or base is None:
                    cells += ["-", "-"]
                    continue
                difference = paired_difference(mine, base)
                cells += [
                    f"{difference.mean:+.3f} [{difference.low:+.3f}, {difference.high:+.3f}]",
                    f"{difference.positive:.2f}",
                ]
            lines.append(f"| {t} | {method} | " + " | ".join(cells) + " |")
    return lines


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
