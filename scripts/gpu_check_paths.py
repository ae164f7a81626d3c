"""GPU check of the faster generation paths: vLLM and the static engine's CUDA graphs.

On the same weights and prompt token ids, greedy decoding with

1. the static engine (``generation.engine=static``: the baseline),
2. ``generation.engine=vllm`` (when CUDA and vllm are present), and
3. the static engine with ``generation.cuda_graphs=true`` (when CUDA and flash-attn are),

and compares each path's answers with the baseline's (identical token ids per prompt, the first
position where they part) and its new tokens per second. A path that cannot run here is skipped
with the reason its refusal gives. The weights: SmolLM2-135M-Instruct when the model cache holds
it, else a random Llama with a tiny tokenizer (answers still comparable: same weights).

    python scripts/gpu_check_paths.py [--dtype bfloat16] [--new-tokens 32]

Prints ``GPU_CHECK_RESULT {json}`` last. Exit status: 0 when every path that ran passed (at
least half of its greedy answers identical to the static engine's: bf16 kernels differ), 1 when
one failed, 2 when neither path could run (both skipped). ``--smoke`` runs the baseline on CPU
(the test suite's check of this script). Then, with vllm, one ``scir iterate`` iteration that
samples with ``generation.engine=vllm`` (path ``vllm_iterate``: completes, N responses per
prompt, the stage's HF folder removed). Not yet run on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

RESULT_TAG = "GPU_CHECK_RESULT "
TEXTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain why the sky is blue in one sentence.",
    "List three prime numbers.",
    "How do I sort a list in Python?",
    "Name a famous painter.",
    "What is 12 times 7?",
    "Give me a synonym for quick.",
)


def _hf_dir(work: Path, dtype: str) -> Path:
    """SmolLM2 when cached, else a random Llama with a tiny tokenizer written under ``work``."""
    from megatron_scir.testing import real_models as rm

    cached = (
        rm.model_cache_dir() / f"{rm.SMOLLM2_PACKAGE}-{rm.SMOLLM2_VERSION}" / rm.SMOLLM2_HF_NAME
    )
    if (cached / "config.json").is_file():
        return cached
    import torch

    from megatron_scir.testing.hf import tiny_hf_llama

    tiny_hf_llama(work / "hf", tokenizer=True, dtype=getattr(torch, dtype))
    return work / "hf"


def _timed(backend, prompts, settings) -> tuple[list, float]:
    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else lambda: None
    backend.generate(prompts[:2], settings, seed=0)  # warm-up (and graph capture)
    sync()
    start = time.perf_counter()
    completions = backend.generate(prompts, settings, seed=0)
    sync()
    return completions, time.perf_counter() - start


def _compare(name: str, baseline, completions, seconds: float) -> dict:
    """Identical answers and the first differing position per prompt, and tokens/s."""
    identical, parted = 0, []
    for ours, theirs in zip(completions, baseline, strict=True):
        if ours.token_ids == theirs.token_ids:
            identical += 1
            continue
        pairs = zip(ours.token_ids, theirs.token_ids, strict=False)
        parted.append(next((i for i, (a, b) in enumerate(pairs) if a != b), None))
    tokens = sum(len(c.token_ids) for c in completions)
    ok = identical * 2 >= len(baseline)
    return {
        "path": name,
        "status": "pass" if ok else "fail",
        "identical": f"{identical}/{len(baseline)}",
        "first_difference": parted,
        "tokens_per_s": round(tokens / seconds, 1),
    }


def _path(name: str, blockers: list[str], run) -> dict:
    if blockers:
        return {"path": name, "status": "skipped", "why": "; ".join(blockers)}
    try:
        return run()
    except Exception as error:  # noqa: BLE001 — report the path's failure, run the next one
        traceback.print_exc()
        return {"path": name, "status": "fail", "why": f"{type(error).__name__}: {error}"}


def _vllm_iteration(hf_dir: Path, work: Path, dtype: str) -> dict:
    """One ``scir iterate`` iteration that samples with vLLM (``generation.engine=vllm``): the
    generate stage exports M_1 to a Hugging Face folder, samples from it and removes it. Passes
    when the iteration completes with ``num_responses`` responses per prompt and the folder
    gone; reports the generate stage's tokens/s."""
    prompts = work / "iterate_prompts.jsonl"
    lines = (json.dumps({"id": i, "prompt": text}) + "\n" for i, text in enumerate(TEXTS))
    prompts.write_text("".join(lines))
    run_dir = work / "iterate"
    cmd = [sys.executable, "-m", "megatron_scir.cli", "iterate", "--hf-dir", str(hf_dir)]
    cmd += ["--no-progress", f"iteration.run_dir={run_dir}", f"data.prompts={prompts}"]
    cmd += ["iteration.num_iterations=1", "iteration.seed_sft=false", "generation.engine=vllm"]
    cmd += [f"model.params_dtype={dtype}", "generation.max_new_tokens=128"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    print(done.stdout[-4000:], done.stderr[-8000:], sep="\n", flush=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or ["no output"]
        return {"path": "vllm_iterate", "status": "fail", "why": lines[-1][:300]}
    generate = json.loads((run_dir / "iter_1" / "generate" / "stage.json").read_text())
    metrics = generate.get("metrics", {})
    responses = metrics.get("responses", 0)
    folder_gone = not (run_dir / "iter_1" / "generate" / "policy_hf").exists()
    ok = responses == len(TEXTS) * 4 and folder_gone
    return {
        "path": "vllm_iterate",
        "status": "pass" if ok else "fail",
        "identical": f"{int(responses)} responses, policy_hf removed: {folder_gone}",
        "tokens_per_s": round(metrics.get("tokens_per_s", float("nan")), 1),
        "iteration_s": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument(
        "--smoke", action="store_true", help="run on CPU too (float32; the baseline only)"
    )
    args = parser.parse_args(argv)

    import torch

    if args.smoke and not torch.cuda.is_available():
        args.dtype = "float32"
    elif not torch.cuda.is_available():
        print(RESULT_TAG + json.dumps({"paths": [], "why": "no CUDA device"}), flush=True)
        return 2
    from megatron_scir.data.tokenizer import build_tokenizer
    from megatron_scir.generation import SamplingSettings, generation_layout
    from megatron_scir.generation.cuda_graphs import cuda_graph_blockers
    from megatron_scir.generation.mcore_inference import build_backend
    from megatron_scir.generation.vllm_backend import build_vllm_backend, vllm_blockers
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.recipe.model import HF, ModelSource, load_model, load_run_config

    with tempfile.TemporaryDirectory(prefix="gpu-paths-") as work:
        hf_dir = _hf_dir(Path(work), args.dtype)
        overrides = [f"model.params_dtype={args.dtype}", f"generation.max_batch_size={len(TEXTS)}"]
        overrides += [f"generation.max_new_tokens={args.new_tokens}"]
        cfg = load_run_config(None, overrides, hf_dir=str(hf_dir))
        cfg = dataclasses.replace(cfg, parallel=generation_layout(cfg.parallel))
        gen = cfg.generation
        with parallel_world(cfg.parallel, seed=cfg.train.seed) as runtime:
            (model,) = load_model(cfg, ModelSource(HF, str(hf_dir)))
            tokenizer = build_tokenizer(cfg.data)
            prompts = [tokenizer.encode(t)[: cfg.data.max_prompt_length] for t in TEXTS]
            settings = SamplingSettings.greedy_decoding(args.new_tokens)
            with torch.no_grad(), build_backend(model, cfg, tokenizer) as static:
                baseline, seconds = _timed(static, prompts, settings)
            results = [_compare("static", baseline, baseline, seconds)]

            def graphs() -> dict:
                graph_cfg = dataclasses.replace(
                    cfg, generation=dataclasses.replace(gen, engine="static", cuda_graphs=True)
                )
                with torch.no_grad(), build_backend(model, graph_cfg, tokenizer) as backend:
                    return _compare("cuda_graphs", baseline, *_timed(backend, prompts, settings))

            def vllm() -> dict:
                vllm_cfg = dataclasses.replace(
                    cfg, generation=dataclasses.replace(gen, engine="vllm", cuda_graphs=True)
                )
                with build_vllm_backend(hf_dir, vllm_cfg, tokenizer, runtime=runtime) as backend:
                    return _compare("vllm", baseline, *_timed(backend, prompts, settings))

            results.append(_path("cuda_graphs", cuda_graph_blockers(), graphs))
            results.append(_path("vllm", vllm_blockers(), vllm))
        # after the world above is gone: scir iterate starts its own
        iterate = partial(_vllm_iteration, hf_dir, Path(work), args.dtype)
        results.append(_path("vllm_iterate", vllm_blockers(), iterate))
    print(RESULT_TAG + json.dumps({"model": str(hf_dir), "paths": results}), flush=True)
    statuses = [r["status"] for r in results[1:]]
    if "fail" in statuses:
        return 1
    return 2 if all(s == "skipped" for s in statuses) else 0


if __name__ == "__main__":
    sys.exit(main())
