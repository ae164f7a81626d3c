"""vLLM as a generation backend (``generation.engine=vllm``), the engine NeMo-RL, OpenRLHF and
verl sample with. Written against vLLM's offline API (``vllm.LLM``, ``SamplingParams``,
``TokensPrompt``); vLLM is imported only when a backend is built, never by the CPU tests.

What it samples from: a Hugging Face folder of the current policy (``scir generate --hf-dir``,
the iteration's ``checkpoint.export_hf`` folder, or a checkpoint exported with ``scir convert
mcore-to-hf``). What it samples with: the runner's prompt token ids (``prompt_token_ids``: never
re-tokenized), the same :class:`SamplingSettings` (temperature, top-p / top-k, the token budget,
the tokenizer's stop ids, stop strings, ``ignore_eos``) and a seed per request, derived from the
runner's batch seed (itself from ``generation.seed`` and the batch's (prompt id, sample) keys)
and the request's place in the batch. It returns the same :class:`Completion` the static backend
returns, so the output stream, chunks and resumption are the runner's, unchanged.

Where it runs: vLLM joins the world the job launched (``distributed_executor_backend=
"external_launcher"``): every rank is one vLLM worker on its own GPU, ``tensor_parallel_size`` is
the run's TP and ``data_parallel_size`` its DP, so a vLLM tensor-parallel group is the run's
tensor-parallel group and each data-parallel replica samples the requests the runner deals it
(vLLM's external launcher leaves the load balancing to the caller). Every rank of a replica
calls :meth:`VllmBackend.generate` with the same arguments and gets the same completions, the
contract of :class:`~megatron_scir.generation.backend.GenerationBackend`. Pipeline parallelism
is refused (``config.validate``). Not yet run on a GPU: docs/generation.md, GPU paths.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import torch

from megatron_scir.config import ConfigError
from megatron_scir.generation.backend import Completion, check_batch
from megatron_scir.generation.settings import SamplingSettings

PIP_INSTALL = "pip install 'megatron-scir[vllm]'"
MEMORY_HEADROOM = 0.9
"""vLLM's share of the GPU memory free when it starts (weights, activations, its KV cache): the
policy's Megatron chunks, when loaded, stay where they are."""
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def vllm_blockers() -> list[str]:
    """What is missing for ``generation.engine=vllm`` here (empty: it can run).

    Looks for the package without importing it (importing vLLM initialises CUDA state).
    """
    blockers = []
    if not torch.cuda.is_available():
        blockers.append("no CUDA device")
    if importlib.util.find_spec("vllm") is None:
        blockers.append(f"vllm is not installed ({PIP_INSTALL})")
    return blockers


def request_seed(batch_seed: int, index: int) -> int:
    """The seed of request ``index`` of a batch seeded ``batch_seed``: the N samples of a prompt
    differ, and the same run gives every request the same seed again."""
    digest = hashlib.blake2b(repr((batch_seed, index)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class VllmBackend:
    """``vllm.LLM`` over a Hugging Face folder, as a :class:`GenerationBackend`.

    Collective: every rank of the world builds it (vLLM's external launcher) and the ranks of a
    data-parallel replica call :meth:`generate` with the same arguments.

    Args:
        hf_dir: The policy as a Hugging Face folder (config.json, safetensors).
        tensor_parallel_size: The run's TP.
        data_parallel_size: The run's DP (world size ÷ TP).
        dp_rank: This rank's data-parallel replica (checked against vLLM's).
        eos_id: End-of-sequence id.
        stop_ids: Further ids that end a response like EOS (end-of-turn tokens).
        max_batch_size: Requests per :meth:`generate` call at most (vLLM's ``max_num_seqs``).
        max_prompt_length: Longest prompt, in tokens.
        max_new_tokens: Longest response; with the prompt, vLLM's ``max_model_len``.
        dtype: ``model.params_dtype`` (``bfloat16``, ``float16`` or ``float32``).
        seed: vLLM's engine seed (``generation.seed``); the requests carry their own.
        cuda_graphs: Let vLLM capture CUDA graphs (False: ``enforce_eager``).
    """

    name = "vllm"

    def __init__(
        self,
        hf_dir: str | os.PathLike,
        *,
        tensor_parallel_size: int,
        data_parallel_size: int,
        dp_rank: int,
        eos_id: int,
        stop_ids: Collection[int] = (),
        max_batch_size: int,
        max_prompt_length: int,
        max_new_tokens: int,
        dtype: str,
        seed: int,
        cuda_graphs: bool,
    ) -> None:
        blockers = vllm_blockers()
        if blockers:
            raise ConfigError(vllm_refusal(blockers))
        try:
            import vllm  # lazy: CUDA-only wheels, optional extra
        except ImportError as error:
            raise ConfigError(
                f"generation.engine=vllm: importing vllm failed ({error}); {PIP_INSTALL} into "
                "an environment whose torch and CUDA match vLLM's wheel"
            ) from error
        hf_dir = Path(hf_dir)
        if not (hf_dir / "config.json").is_file():
            raise ConfigError(
                f"generation.engine=vllm: {hf_dir} is not a Hugging Face folder (no config.json)"
            )
        self.eos_id = eos_id
        self.stop_ids = tuple(sorted({eos_id, *map(int, stop_ids)}))
        self.max_batch_size, self.max_prompt_length = max_batch_size, max_prompt_length
        self.max_new_tokens = max_new_tokens
        # vLLM detokenizes only for stop strings; a folder without tokenizer files (a checkpoint
        # trained with a SentencePiece model) gets its stop strings cut afterwards instead
        self._detokenizes = any((hf_dir / f).is_file() for f in _TOKENIZER_FILES)
        free, total = torch.cuda.mem_get_info()
        self._llm = vllm.LLM(
            model=str(hf_dir),
            skip_tokenizer_init=not self._detokenizes,
            tensor_parallel_size=tensor_parallel_size,
            data_parallel_size=data_parallel_size,
            pipeline_parallel_size=1,
            distributed_executor_backend="external_launcher",
            dtype=dtype,
            seed=seed,
            max_model_len=max_prompt_length + max_new_tokens,
            max_num_seqs=max_batch_size,
            gpu_memory_utilization=MEMORY_HEADROOM * free / total,
            enforce_eager=not cuda_graphs,
            enable_prefix_caching=True,  # the N samples of a prompt share its prefill
        )
        vllm_dp_rank = self._llm.llm_engine.vllm_config.parallel_config.data_parallel_rank
        if vllm_dp_rank != dp_rank:
            self.close()
            raise ConfigError(
                f"generation.engine=vllm: vLLM placed this rank in data-parallel replica "
                f"{vllm_dp_rank}, the run in {dp_rank}: launch with Megatron's default rank "
                "order (tensor-parallel ranks adjacent)"
            )

    def generate(
        self, prompts: Sequence[Sequence[int]], settings: SamplingSettings, *, seed: int
    ) -> list[Completion]:
        """Sample one completion per prompt (see ``GenerationBackend``): request ``i`` is
        seeded with :func:`request_seed` ``(seed, i)``."""
        from vllm import SamplingParams  # lazy: see __init__
        from vllm.inputs import TokensPrompt  # lazy: see __init__

        self._check(prompts, settings)
        requests = [TokensPrompt(prompt_token_ids=list(map(int, p))) for p in prompts]
        arguments = sampling_arguments(settings, self.stop_ids, detokenizes=self._detokenizes)
        params = [
            SamplingParams(seed=request_seed(seed, i), **arguments) for i in range(len(prompts))
        ]
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        return [
            completion_of(
                out.outputs[0].token_ids,
                out.outputs[0].finish_reason,
                out.outputs[0].stop_reason,
                stop_ids=self.stop_ids,
                ignore_eos=settings.ignore_eos,
            )
            for out in outputs
        ]

    def _check(self, prompts: Sequence[Sequence[int]], settings: SamplingSettings) -> None:
        check_batch(
            prompts, settings, max_batch_size=self.max_batch_size,
            max_prompt_length=self.max_prompt_length, max_new_tokens=self.max_new_tokens,
        )

    def close(self) -> None:
        """Free vLLM's engine, its KV cache and its parallel groups (the world stays: the job
        owns it)."""
        from vllm.distributed.parallel_state import destroy_model_parallel  # lazy

        llm, self._llm = getattr(self, "_llm", None), None
        del llm
        destroy_model_parallel()
        gc.collect()
        torch.cuda.empty_cache()

    def __enter__(self) -> VllmBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sampling_arguments(
    settings: SamplingSettings, stop_ids: Sequence[int], *, detokenizes: bool
) -> dict:
    """vLLM's ``SamplingParams`` arguments (the seed aside) for ``settings``: Megatron's
    distribution (temperature, then top-k or the nucleus; greedy is temperature 0), the token
    budget, the stop ids unless ``ignore_eos``, and the stop strings where vLLM detokenizes."""
    greedy = settings.greedy
    return {
        "n": 1,
        "temperature": 0.0 if greedy else settings.temperature,
        "top_p": settings.top_p if settings.nucleus and not greedy else 1.0,
        "top_k": settings.top_k if settings.top_k > 0 and not greedy else -1,
        "max_tokens": settings.max_new_tokens,
        "ignore_eos": settings.ignore_eos,
        "stop_token_ids": [] if settings.ignore_eos else list(stop_ids),
        "stop": list(settings.stop_strings) if detokenizes and settings.stop_strings else None,
        "detokenize": detokenizes and bool(settings.stop_strings),
    }


def completion_of(
    token_ids: Sequence[int],
    finish_reason: str | None,
    stop_reason: int | str | None,
    *,
    stop_ids: Collection[int],
    ignore_eos: bool,
) -> Completion:
    """A vLLM ``CompletionOutput``'s fields as the runner's :class:`Completion`: the stop id
    that ended it dropped (the static backend never keeps it), ``hit_eos`` for a stop id or EOS
    (vLLM: finish reason ``stop`` with no stop string), not for a stop string or the budget."""
    ids = tuple(int(t) for t in token_ids)
    by_stop_id = not ignore_eos and finish_reason == "stop" and not isinstance(stop_reason, str)
    if by_stop_id and ids and ids[-1] in stop_ids:
        ids = ids[:-1]
    return Completion(token_ids=ids, hit_eos=by_stop_id)


def vllm_refusal(blockers: Sequence[str]) -> str:
    """The one-line refusal of ``generation.engine=vllm`` for ``blockers``."""
    return (
        f"generation.engine=vllm cannot run here: {'; '.join(blockers)}. "
        "Use generation.engine=static (or auto)"
    )


def build_vllm_backend(hf_dir: str | os.PathLike | None, cfg, tokenizer, *, runtime=None):
    """The vLLM backend of the run ``cfg`` over ``hf_dir``, on every rank of the world.

    Args:
        hf_dir: The policy as a Hugging Face folder; None is refused (vLLM reads no Megatron
            checkpoint: export it with ``scir convert mcore-to-hf``).
        cfg: The run config (``generation``, ``parallel``, ``data.max_prompt_length``,
            ``model.params_dtype``).
        tokenizer: The policy's tokenizer (EOS and stop ids).
        runtime: The parallel runtime (its data-parallel size and rank); None: a world of one.
    """
    if hf_dir is None:
        raise ConfigError(
            "generation.engine=vllm samples from a Hugging Face folder of the policy: pass "
            "--hf-dir, or export the checkpoint first (scir convert mcore-to-hf CKPT OUT)"
        )
    gen = cfg.generation
    return VllmBackend(
        hf_dir,
        tensor_parallel_size=cfg.parallel.tensor_model_parallel_size,
        data_parallel_size=runtime.dp_size if runtime is not None else 1,
        dp_rank=runtime.dp_rank if runtime is not None else 0,
        eos_id=tokenizer.eos_id,
        stop_ids=tokenizer.stop_ids,
        max_batch_size=gen.max_batch_size,
        max_prompt_length=cfg.data.max_prompt_length,
        max_new_tokens=gen.max_new_tokens,
        dtype=cfg.model.params_dtype,
        seed=gen.seed,
        cuda_graphs=gen.cuda_graphs,
    )
