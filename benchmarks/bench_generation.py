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

On CPU the Megatron side runs under the gloo compatibility layer (``parallel/cpu_compat.py``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import torch

from megatron_scir.config.choices import Dtype, choices
from megatron_scir.models.shapes import torch_dtype
from megatron_scir.testing.hf import LLAMA_SHAPES as SHAPES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--dtype", choices=choices(Dtype), default=Dtype.FLOAT32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-length", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-hf", action="store_true", help="skip transformers generate")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
