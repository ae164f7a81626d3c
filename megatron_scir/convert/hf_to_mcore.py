"""Hugging Face Llama/Mistral/Qwen folder → this rank's Megatron model chunks → a dist checkpoint.

The model's own sharded state dict says, for each local tensor, its checkpoint key, its layer and
which slice of the global tensor this rank holds (TP offsets, the ``[gate_r; up_r]`` halves of
``linear_fc1``). Loading is therefore one loop for every TP/PP/VPP layout and both layer specs:
read the HF tensors of that key and layer, build the global Megatron tensor
(:mod:`megatron_scir.convert.keymap`), copy the rank's slice into the parameter. Peak memory is
this rank's model shard plus one global tensor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_scir.checkpoint import save_checkpoint
from megatron_scir.config import Config, ModelConfig, ParallelConfig
from megatron_scir.convert.errors import ConversionError
from megatron_scir.convert.hf_config import model_fields_from_hf, read_hf_config
from megatron_scir.convert.hf_io import SafetensorsReader, asset_files
from megatron_scir.convert.keymap import BY_MCORE_KEY, to_mcore
from megatron_scir.models import build_model_chunks
from megatron_scir.models.shapes import hf_tensor_shapes
from megatron_scir.parallel.runtime import Runtime

# buffers some exporters save that carry no weights
IGNORED_HF_SUFFIXES = ("rotary_emb.inv_freq",)


def check_hf_model(hf_dir: str | Path, m: ModelConfig) -> None:
    """Refuse an HF folder that ``m`` does not describe exactly, before anything is built.

    Raises:
        ConversionError: naming the config field or tensor, the expected and the found value.
    """
    source = f"{hf_dir}/config.json"
    hf = read_hf_config(hf_dir)
    for name, value in model_fields_from_hf(hf, source=source).items():
        if name != "params_dtype" and getattr(m, name) != value:
            raise ConversionError(
                f"{source} gives model.{name}={value!r}, the config has {getattr(m, name)!r}: "
                "build the config with config_from_hf"
            )
    expected = hf_tensor_shapes(m)
    with SafetensorsReader(hf_dir) as reader:
        present = set(reader.names())
        for name, shape in expected.items():
            if name not in present:
                raise ConversionError(
                    f"{hf_dir}: tensor {name} is missing (expected shape {list(shape)})"
                )
            found = reader.shape(name)
            if found != shape:
                raise ConversionError(
                    f"{hf_dir}: tensor {name}: expected shape {list(shape)}, found {list(found)}"
                )
        ignored = {n for n in present if n.endswith(IGNORED_HF_SUFFIXES)}
        if m.share_embeddings_and_output_weights:
            ignored.add("lm_head.weight")  # some exporters write the shared tensor twice
        unexpected = sorted(present - set(expected) - ignored)
        if unexpected:
            raise ConversionError(
                f"{hf_dir}: unexpected tensor {unexpected[0]} (shape "
                f"{list(reader.shape(unexpected[0]))}) for the {m.num_layers}-layer model"
                + (f", and {len(unexpected) - 1} more" if len(unexpected) > 1 else "")
            )


def local_shards(chunks: Sequence[torch.nn.Module]) -> Iterator:
    """Every ``ShardedTensor`` of this rank's chunks; their ``data`` are the parameters (views)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values  # lazy: Megatron-Core
    from megatron.core.dist_checkpointing.mapping import (  # lazy: Megatron-Core
        ShardedTensor,
        apply_factories,
    )
    from megatron.core.utils import unwrap_model  # lazy: Megatron-Core

    for model in unwrap_model(list(chunks)):
        sharded = model.sharded_state_dict()
        apply_factories(sharded)
        yield from (v for v in nested_values(sharded) if isinstance(v, ShardedTensor))


def _local_slice(shard) -> tuple[slice, ...]:
    offsets = shard.global_offset[shard.prepend_axis_num :]
    return tuple(slice(o, o + n) for o, n in zip(offsets, shard.local_shape, strict=True))


def load_hf_into_model(
    chunks: Sequence[torch.nn.Module], hf_dir: str | Path, cfg: Config, *, progress: bool = True
) -> None:
    """Copy a Hugging Face model's weights into this rank's model chunks (any TP/PP/VPP layout).

    Args:
        chunks: this rank's chunks, built for ``cfg`` (e.g. ``build_model_chunks(cfg)``).
        hf_dir: a Llama/Mistral/Qwen2/Qwen3 folder with ``config.json`` and safetensors weights.
        cfg: the config the chunks were built with; its model must equal the folder's
            (see :func:`megatron_scir.convert.hf_config.config_from_hf`).
        progress: a progress bar over this rank's tensors (rank 0 only).

    Vocabulary rows beyond the tokenizer's (Megatron's padding) are set to zero. A tied model's
    last pipeline stage (PP > 1) saves its output-layer copy under the word embeddings' key, so
    it is filled from ``model.embed_tokens.weight`` like the first stage's embedding.
    """
    from tqdm import tqdm  # lazy: tqdm costs ~45 ms, only while loading

    check_hf_model(hf_dir, cfg.model)
    shards = list(local_shards(chunks))
    show = progress and (not dist.is_initialized() or dist.get_rank() == 0)
    cached: tuple[tuple[str, int | None], torch.Tensor] | None = None
    with SafetensorsReader(hf_dir) as reader, torch.no_grad():
        for shard in tqdm(shards, desc="hf → mcore", unit="tensor", disable=not show):
            entry = BY_MCORE_KEY[shard.key]
            layer = shard.global_offset[0] if entry.per_layer else None
            if cached is None or cached[0] != (shard.key, layer):
                names = entry.hf_names(layer)
                padded = shard.global_shape[0]
                full = to_mcore(
                    entry, [reader.get(n) for n in names], cfg.model, padded_vocab=padded
                )
                cached = ((shard.key, layer), full)
            shard.data.copy_(cached[1][_local_slice(shard)])


def conversion_layout(cfg: Config, world_size: int) -> Config:
    """The config to build the converting model with, for a world of ``world_size`` processes.

    The local spec always: it writes the same checkpoint keys as Transformer Engine, so a CPU
    node converts for a TE/FP8 target. A world of one builds TP=1/PP=1 but pads the vocabulary
    as the target layout will, so the checkpoint holds exactly what a TP×PP run writes.
    Otherwise the world must be a multiple of TP×PP and the model is built at the target layout.
    """
    p = cfg.parallel
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size
    model = dataclasses.replace(cfg.model, transformer_impl="local", fp8=None, fp8_param=False)
    if world_size == 1:
        unit = cfg.model.make_vocab_size_divisible_by * p.tensor_model_parallel_size
        model = dataclasses.replace(model, make_vocab_size_divisible_by=unit)
        return dataclasses.replace(cfg, model=model, parallel=ParallelConfig())
    if world_size % model_parallel:
        raise ConversionError(
            f"the conversion runs in {world_size} processes, not a multiple of TP × PP = "
            f"{p.tensor_model_parallel_size} × {p.pipeline_model_parallel_size}: launch one "
            "process, or a multiple of TP × PP with torchrun"
        )
    return dataclasses.replace(cfg, model=model)


def convert_hf_to_mcore(
    runtime: Runtime, hf_dir: str | Path, out_dir: str | Path, cfg: Config, *, progress: bool = True
) -> Path:
    """Write a megatron-scir checkpoint of an HF folder (collective over the runtime's world).

    ``cfg`` is the target config (from :func:`config_from_hf`): its model is the HF model's and
    its parallel section the layout the checkpoint is meant for (any layout can read it). The
    caller enters the parallel world of ``conversion_layout(cfg, world_size).parallel``; this
    neither creates nor destroys parallel state. The folder's config.json and tokenizer files go
    into the checkpoint's ``hf/``.
    """
    check_hf_model(hf_dir, cfg.model)
    if Path(out_dir).exists():
        raise ConversionError(f"{out_dir} already exists: choose another --out")
    work = conversion_layout(cfg, runtime.world_size)
    wanted = (work.parallel.tensor_model_parallel_size, work.parallel.pipeline_model_parallel_size)
    if (runtime.tp_size, runtime.pp_size) != wanted:
        raise ValueError(
            f"convert_hf_to_mcore runs at TP={wanted[0]} PP={wanted[1]} in a world of "
            f"{runtime.world_size}, the runtime is TP={runtime.tp_size} PP={runtime.pp_size}: "
            "enter parallel_world(conversion_layout(cfg, world_size).parallel)"
        )
    chunks = build_model_chunks(work, init_weights=False)  # every weight is loaded below
    load_hf_into_model(chunks, hf_dir, work, progress=progress)
    assets = [Path(hf_dir) / "config.json", *asset_files(hf_dir)]
    return save_checkpoint(out_dir, chunks, cfg, iteration=0, step=0, assets=assets)
