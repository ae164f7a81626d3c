"""Generation throughput: Megatron-Core's static engine vs transformers ``generate``, same weights.

A random Llama of the chosen shape is written as a Hugging Face folder, loaded by transformers and
converted into a Megatron-Core model (TP=1, PP=1) by megatron-scir's converter, so both sides
decode with identical weights. Each batch size decodes ``--new-tokens`` tokens greedily after
prompts of ``--prompt-length`` random tokens, EOS ignored (every row runs to the budget); one
warm-up batch precedes ``--repeats`` timed batches (plus one process-wide warm-up of each side
before the table). Reported: the median batch's new tokens/s and ms per decode step.

    python benchmarks/bench_generation.py                        # CPU: the tiny shape
    python benchmarks/bench_generation.py --shape 1b --dtype bfloat16 \\
        --batch-sizes 32 128 --prompt-length 128 --new-tokens 128  # one GPU

With ``--smollm2`` (or ``--hf-dir DIR``) it measures what ``scir generate`` does instead: a real
chat model (SmolLM2-135M-Instruct from the real-model cache), chat prompts in its template, and
four cases: N = 1 greedy and N = 8 sampled responses per prompt, short prompts and long ones (a
passage before the question). The megatron-scir side is the generation runner itself
(``megatron_scir.generation.generate``: encoding, batching prompts × N up to
``generation.max_batch_size``, stop ids, the output stream); transformers ``generate`` gets the
same chat ids in the same batches (left-padded, ``num_return_sequences=N``, its stop ids) and the
same sampling settings. Reported: new tokens/s of each (responses cut at their stop id) and the
ratio; greedy answers are compared. The greedy cases (a few seconds each) run ``--chat-repeats``
times, the three implementations taking turns, and report the median run; the sampled ones run
once. A second table measures the faster paths on the same cases (``--engines``: vLLM over
the same folder, the static engine with CUDA graphs), one warm-up run and one timed run each,
against the same transformers runs; an engine that cannot run here gets one row saying why.

    python benchmarks/bench_generation.py --smollm2                 # CPU: ~5 minutes on 2 cores

On CPU the Megatron side runs under the gloo compatibility layer (``parallel/cpu_compat.py``).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from megatron_scir.config.choices import Dtype, choices
from megatron_scir.models.shapes import torch_dtype
from megatron_scir.testing.hf import LLAMA_SHAPES as SHAPES
from megatron_scir.testing.real_models import SMOLLM2_CHAT_PROMPTS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", choices=choices(Dtype), default=Dtype.FLOAT32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-hf", action="store_true", help="skip transformers generate")
    chat = parser.add_argument_group("chat model (what scir generate does)")
    chat.add_argument("--smollm2", action="store_true", help="SmolLM2-135M-Instruct (cached)")
    chat.add_argument("--hf-dir", help="a Hugging Face chat model folder")
    chat.add_argument("--samples", type=int, nargs="+", default=[1, 8], help="N per prompt")
    chat.add_argument("--max-new-tokens", type=int, default=48)
    chat.add_argument("--rows", type=int, default=32, help="generation.max_batch_size")
    chat.add_argument("--cases", nargs="+", default=["short", "long"], choices=["short", "long"])
    chat.add_argument(
        "--chat-repeats", type=int, default=3, help="runs of each greedy case (the median)"
    )
    chat.add_argument(
        "--engines", nargs="*", default=list(ENGINES), choices=ENGINES,
        help="the faster paths, each against transformers (a row says why one cannot run)",
    )
    return parser.parse_args(argv)


def timed(fn) -> float:
    """Seconds ``fn()`` takes, synchronising the GPU around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def build_models(args: argparse.Namespace, hf_dir: str):
    """(Megatron stage, transformers model or None, config): the same random weights."""
    from megatron_scir.convert import config_from_hf, load_hf_into_model
    from megatron_scir.models import build_model_chunks
    from megatron_scir.parallel.state import init_distributed, initialize_model_parallel
    from megatron_scir.testing.hf import tiny_hf_llama

    dtype = torch_dtype(args.dtype)
    max_positions = max(2048, args.prompt_length + args.new_tokens)
    hf_model = tiny_hf_llama(
        hf_dir, **SHAPES[args.shape], dtype=dtype, max_position_embeddings=max_positions, seed=0
    )
    cfg = config_from_hf(hf_dir, "tiny", [f"model.params_dtype={args.dtype}"])
    init_distributed(cfg.parallel.distributed_backend)
    initialize_model_parallel(cfg.parallel)
    (model,) = build_model_chunks(cfg)
    load_hf_into_model([model], hf_dir, cfg, progress=False)
    if args.no_hf:
        return model, None, cfg
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return model, hf_model.to(device).eval(), cfg


def bench_megatron(model, cfg, args: argparse.Namespace, batch: int) -> float:
    """Seconds per timed batch of Megatron-Core's static engine."""
    from megatron_scir.generation import SamplingSettings
    from megatron_scir.generation.mcore_inference import StaticEngineBackend

    prompts = torch.randint(3, cfg.model.vocab_size, (batch, args.prompt_length)).tolist()
    settings = SamplingSettings.greedy_decoding(args.new_tokens, ignore_eos=True)
    backend = StaticEngineBackend(
        model,
        eos_id=2,
        bos_id=1,
        num_real_tokens=cfg.model.vocab_size,
        max_batch_size=batch,
        max_prompt_length=args.prompt_length,
        max_new_tokens=args.new_tokens,
        decode=lambda ids: "",
    )
    with backend:
        backend.generate(prompts, settings, seed=0)  # warm-up
        times = [
            timed(lambda: backend.generate(prompts, settings, seed=0)) for _ in range(args.repeats)
        ]
    return statistics.median(times)


def bench_hf(hf_model, args: argparse.Namespace, batch: int, vocab_size: int) -> float:
    """Seconds per timed batch of transformers ``generate`` (greedy, EOS ignored)."""
    device = next(hf_model.parameters()).device
    ids = torch.randint(3, vocab_size, (batch, args.prompt_length), device=device)
    kwargs = dict(
        attention_mask=torch.ones_like(ids),
        max_new_tokens=args.new_tokens,
        do_sample=False,
        pad_token_id=0,
    )
    hf_model.generation_config.eos_token_id = None
    with torch.no_grad():
        hf_model.generate(ids, **kwargs)  # warm-up
        times = [timed(lambda: hf_model.generate(ids, **kwargs)) for _ in range(args.repeats)]
    return statistics.median(times)


PASSAGE = (
    "Read the passage, then answer the question.\n\nPassage: The water cycle describes how water "
    "moves between the oceans, the air and the land. Heat from the sun evaporates water from seas, "
    "lakes and rivers; plants release more through their leaves. The vapour rises, cools and "
    "condenses into tiny droplets that form clouds. When the droplets grow heavy they fall as "
    "rain, snow or hail. Some of that water flows over the ground into streams and back to the "
    "sea, some soaks into the soil and refills underground aquifers, and some is stored for "
    "years in glaciers and ice caps. The cycle has no beginning or end, and the total amount of "
    "water on Earth stays almost the same, although where it is found changes with the seasons "
    "and the climate.\n\nQuestion: "
)


def chat_cases(args) -> list[tuple[str, int, list[str]]]:
    """(name, N, prompts) for each prompt kind × N."""
    short = list(SMOLLM2_CHAT_PROMPTS)
    texts = {"short": short, "long": [PASSAGE + p for p in short]}
    return [(kind, n, texts[kind]) for kind in args.cases for n in args.samples]


def chat_settings(n: int, max_new_tokens: int, rows: int) -> list[str]:
    """The run's overrides: greedy for N = 1, the default sampling (T 0.7, top-p 0.9) else."""
    sampling = ["generation.temperature=0"] if n == 1 else []
    return [
        *sampling, f"generation.num_responses={n}", f"generation.max_new_tokens={max_new_tokens}",
        f"generation.max_batch_size={rows if n > 1 else min(rows, 16)}", "logging.progress=false",
    ]


def megatron_loop_backend(model, cfg, tokenizer):
    """The previous implementation, as the baseline: the same backend decoded by Megatron-Core's
    own ``StaticInferenceEngine`` loop (every row prefilled, every row stepped until the
    batch's longest is done) and sampled by Megatron's ``TorchSampling`` (a full sort and
    ``multinomial`` per step)."""
    import warnings

    from megatron.core.inference.engines import StaticInferenceEngine, static_engine
    from megatron.core.inference.inference_request import InferenceRequest
    from tqdm import tqdm

    from megatron_scir.generation.backend import Completion
    from megatron_scir.generation.mcore_inference import _sampling_params, build_backend

    backend = build_backend(model, cfg, tokenizer)
    controller = backend._controller
    megatron_sampler = type(controller).__mro__[1].sample_from_logits

    def sample_from_logits(last_token_logits, params, *args, **kwargs):
        last = last_token_logits.clone()
        last[:, controller.num_real_tokens :] = float("-inf")
        return megatron_sampler(controller, last, params, *args, **kwargs)

    controller.sample_from_logits = sample_from_logits
    static_engine.tqdm = functools.partial(tqdm, disable=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*static engine will be deprecated.*")
        engine = StaticInferenceEngine(
            backend._controller, max_batch_size=backend.max_batch_size, legacy=True
        )

    def generate(prompts, settings, *, seed):
        engine.random_seed = seed
        backend._controller.sampling_rng.manual_seed(seed)
        params = _sampling_params(settings, backend.eos_id)
        requests = [
            InferenceRequest(
                request_id=engine.get_new_request_id(), prompt="", sampling_params=params,
                prompt_tokens=[int(t) for t in p],
            )
            for p in prompts
        ]
        finished = engine.generate(inference_requests=requests)
        for request in requests:
            engine.scheduler.completed_request_pool.pop(request.request_id, None)
            engine.scheduler.requests.pop(request.request_id, None)
        return [
            Completion(
                token_ids=tuple(r.generated_tokens.tolist()),
                hit_eos=r.generated_length < settings.max_new_tokens,
            )
            for r in finished
        ]

    backend.generate = generate
    return backend


def scir_run(
    runtime, model, tokenizer, cfg, prompts: list[str], work: str, *, baseline=False, build=None
):
    """(seconds, new tokens, responses per prompt) of the generation runner on ``prompts``, with
    megatron-scir's backend, (``baseline``) Megatron's own static loop, or ``build(model, cfg,
    tokenizer)``'s backend (another engine)."""
    import os

    from megatron_scir.data import read_records
    from megatron_scir.data.records import PromptRecord
    from megatron_scir.generation.mcore_inference import build_backend
    from megatron_scir.generation.runner import generate_responses

    out = os.path.join(work, f"gen-{time.monotonic_ns()}.jsonl")
    records = [PromptRecord(id=str(i), prompt=p) for i, p in enumerate(prompts)]
    build = build or (megatron_loop_backend if baseline else build_backend)
    with torch.no_grad(), build(model, cfg, tokenizer) as backend:
        stats = generate_responses(runtime, cfg, backend, tokenizer, records, out, progress=False)
    answers = [list(r.responses) for r in read_records(out, "generations")[0]]
    return stats.seconds, stats.num_new_tokens, answers


def hf_run(model, tokenizer, cfg, prompts: list[str], stop_ids: list[int]):
    """(seconds, new tokens, responses per prompt) of transformers ``generate`` in the
    runner's batches: ``max_batch_size // N`` prompts × N rows, left-padded chat ids."""
    gen = cfg.generation
    n, greedy = gen.num_responses, gen.temperature == 0
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    per_call = max(gen.max_batch_size // n, 1)
    kwargs = dict(
        do_sample=not greedy, max_new_tokens=gen.max_new_tokens, num_return_sequences=n,
        eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
    )
    if not greedy:
        kwargs.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k)
    seconds, new_tokens, answers, outputs = 0.0, 0, [], []
    torch.manual_seed(gen.seed)
    for first in range(0, len(chats), per_call):
        batch = tokenizer(
            chats[first : first + per_call], add_special_tokens=False, padding=True,
            return_tensors="pt",
        ).to(model.device)
        with torch.no_grad():
            seconds += timed(functools.partial(_generate_into, outputs, model, batch, kwargs))
        out = outputs.pop()
        width = batch["input_ids"].shape[1]
        rows = []
        for row in out[:, width:].tolist():
            ends = [i for i, t in enumerate(row) if t in stop_ids]
            row = row[: ends[0]] if ends else row
            new_tokens += len(row)
            rows.append(tokenizer.decode(row, skip_special_tokens=True))
        answers += [rows[i : i + n] for i in range(0, len(rows), n)]
    return seconds, new_tokens, answers


ENGINES = ("vllm", "cuda_graphs")
"""The faster paths of docs/generation.md (GPU paths), each measured where it can run."""


def engine_blockers(name: str) -> list[str]:
    """What keeps engine ``name`` from running here (empty: it runs)."""
    from megatron_scir.generation.cuda_graphs import cuda_graph_blockers
    from megatron_scir.generation.vllm_backend import vllm_blockers

    return vllm_blockers() if name == "vllm" else cuda_graph_blockers()


def engine_builder(name: str, hf_dir: str, runtime):
    """``build(model, cfg, tokenizer)`` of engine ``name``: vLLM over the same Hugging Face
    folder, or the static engine with ``generation.cuda_graphs=true``."""
    import dataclasses

    from megatron_scir.generation.mcore_inference import build_backend
    from megatron_scir.generation.vllm_backend import build_vllm_backend

    def build(model, cfg, tokenizer):
        if name == "vllm":
            gen = dataclasses.replace(cfg.generation, engine="vllm")
            vllm_cfg = dataclasses.replace(cfg, generation=gen)
            return build_vllm_backend(hf_dir, vllm_cfg, tokenizer, runtime=runtime)
        gen = dataclasses.replace(cfg.generation, cuda_graphs=True)
        return build_backend(model, dataclasses.replace(cfg, generation=gen), tokenizer)

    return build


def engine_rows(name: str, measured: list[tuple], run) -> list[str]:
    """The table rows of engine ``name``: one per case of ``measured`` ((kind, N, prompts,
    transformers' run)), its tokens/s against transformers', or why it did not run."""
    blockers = engine_blockers(name)
    if blockers:
        return [f"| {name} | - | - | skipped: {'; '.join(blockers)} | - | - | - |"]
    rows = []
    for kind, n, prompts, hf in measured:
        try:
            seconds, tokens, answers = run(name, n, prompts)
        except Exception as error:  # noqa: BLE001 — report the engine's failure, go on
            rows.append(f"| {name} | {kind} | {n} | failed: {type(error).__name__}: {error} "
                        "| - | - | - |")
            continue
        rate, hf_rate = tokens / seconds, hf[1] / hf[0]
        equal = f"{sum(a == b for a, b in zip(answers, hf[2], strict=True))}/{len(prompts)}"
        rows.append(
            f"| {name} | {kind} | {n} | {rate:,.1f} ({tokens} in {seconds:.1f} s) | "
            f"{hf_rate:,.1f} | {rate / hf_rate:.2f}× | {equal if n == 1 else '-'} |"
        )
    return rows


def _median_run(runs: list[tuple]) -> tuple:
    """The run with the median seconds (an odd number of runs)."""
    return sorted(runs, key=lambda run: run[0])[len(runs) // 2]


def _generate_into(outputs: list, model, batch, kwargs) -> None:
    outputs.append(model.generate(**batch, **kwargs))


def chat_main(args: argparse.Namespace) -> int:
    """The chat-model table (see the module docstring)."""
    import dataclasses

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from megatron_scir.data.tokenizer import build_tokenizer
    from megatron_scir.generation.runner import generation_layout
    from megatron_scir.parallel.runtime import parallel_world
    from megatron_scir.recipe.model import HF, ModelSource, load_model, load_run_config

    if args.smollm2:
        from megatron_scir.testing.real_models import smollm2_hf_dir

        args.hf_dir = str(smollm2_hf_dir())
    base = load_run_config(None, [], hf_dir=args.hf_dir)
    base = dataclasses.replace(base, parallel=generation_layout(base.parallel))
    hf_model = AutoModelForCausalLM.from_pretrained(args.hf_dir, dtype=torch.float32).eval()
    hf_model = hf_model.to("cuda" if torch.cuda.is_available() else "cpu")
    hf_tokenizer = AutoTokenizer.from_pretrained(args.hf_dir)
    threads = torch.get_num_threads()
    print(
        f"# {Path(args.hf_dir).name} ({base.model.params_dtype}) on "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}, "
        f"{threads} threads; {len(SMOLLM2_CHAT_PROMPTS)} chat prompts, up to "
        f"{args.max_new_tokens} new tokens, N=1 greedy, N>1 T=0.7 top-p 0.9"
    )
    print(
        "| prompts | N | scir generate tok/s | Megatron loop (before) tok/s | transformers tok/s "
        "| vs transformers | vs before | greedy = transformers |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with parallel_world(base.parallel, seed=base.train.seed) as runtime, \
            tempfile.TemporaryDirectory(prefix="bench-gen-") as work:
        (model,) = load_model(base, ModelSource(HF, args.hf_dir))
        tokenizer = build_tokenizer(base.data)
        stop_ids = sorted(tokenizer.stop_ids | {tokenizer.eos_id})
        warm = load_run_config(None, chat_settings(1, 4, args.rows), hf_dir=args.hf_dir)
        warm = dataclasses.replace(warm, parallel=base.parallel)
        for baseline in (False, True):  # warm-up
            scir_run(runtime, model, tokenizer, warm, list(SMOLLM2_CHAT_PROMPTS[:2]), work,
                     baseline=baseline)
        def case_config(n: int):
            cfg = load_run_config(
                None, chat_settings(n, args.max_new_tokens, args.rows), hf_dir=args.hf_dir
            )
            return dataclasses.replace(cfg, parallel=base.parallel)

        measured = []
        for kind, n, prompts in chat_cases(args):
            cfg = case_config(n)
            runs = {"ours": [], "before": [], "hf": []}
            for _ in range(args.chat_repeats if n == 1 else 1):  # the three take turns
                runs["ours"].append(scir_run(runtime, model, tokenizer, cfg, prompts, work))
                runs["before"].append(
                    scir_run(runtime, model, tokenizer, cfg, prompts, work, baseline=True)
                )
                runs["hf"].append(hf_run(hf_model, hf_tokenizer, cfg, prompts, stop_ids))
            ours, before, hf = (_median_run(runs[name]) for name in ("ours", "before", "hf"))
            measured.append((kind, n, prompts, hf))
            rate = {name: tok / sec for name, (sec, tok, _) in
                    {"ours": ours, "before": before, "hf": hf}.items()}
            equal = "-"
            if n == 1:
                same = sum(a == b for a, b in zip(ours[2], hf[2], strict=True))
                was = sum(a == b for a, b in zip(before[2], hf[2], strict=True))
                equal = f"{same}/{len(prompts)} (before {was})"
            print(
                f"| {kind} | {n} | {rate['ours']:,.1f} ({ours[1]} in {ours[0]:.1f} s) | "
                f"{rate['before']:,.1f} ({before[1]} in {before[0]:.1f} s) | "
                f"{rate['hf']:,.1f} ({hf[1]} in {hf[0]:.1f} s) | "
                f"{rate['ours'] / rate['hf']:.2f}× | {rate['ours'] / rate['before']:.2f}× | "
                f"{equal} |",
                flush=True,
            )

        def engine_run(name: str, n: int, prompts: list[str]) -> tuple:
            build = engine_builder(name, args.hf_dir, runtime)
            cfg = case_config(n)
            scir_run(runtime, model, tokenizer, cfg, prompts[:2], work, build=build)  # warm-up
            return scir_run(runtime, model, tokenizer, cfg, prompts, work, build=build)

        print("\n| engine | prompts | N | tok/s | transformers tok/s | vs transformers "
              "| greedy = transformers |")
        print("|---|---|---|---|---|---|---|")
        for name in args.engines:
            for row in engine_rows(name, measured, engine_run):
                print(row, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smollm2 or args.hf_dir:
        return chat_main(args)
    torch.manual_seed(0)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as hf_dir:
        model, hf_model, cfg = build_models(args, hf_dir)
        params = sum(p.numel() for p in model.parameters())
        print(
            f"# {args.shape} Llama ({params / 1e6:.1f}M params, {args.dtype}) on {device}; "
            f"prompt {args.prompt_length} + {args.new_tokens} new tokens, greedy, EOS ignored"
        )
        bench_megatron(model, cfg, args, 1)  # process-wide warm-up (allocator, kernels)
        if hf_model is not None:
            bench_hf(hf_model, args, 1, cfg.model.vocab_size)
        print("| implementation | batch | s/batch | new tokens/s | ms/decode step |")
        print("|---|---|---|---|---|")
        for batch in args.batch_sizes:
            rows = [("Megatron-Core static engine", bench_megatron(model, cfg, args, batch))]
            if hf_model is not None:
                seconds = bench_hf(hf_model, args, batch, cfg.model.vocab_size)
                rows.append(("transformers generate", seconds))
            for name, seconds in rows:
                tokens = batch * args.new_tokens
                print(
                    f"| {name} | {batch} | {seconds:.3f} | {tokens / seconds:,.0f} | "
                    f"{1e3 * seconds / args.new_tokens:.1f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
