"""A Megatron dist checkpoint → a Hugging Face Llama-family folder, one layer in memory at a time.

No model is built: each layer's tensors are read straight from the checkpoint (only that layer's
slice of the layer-stacked tensors), converted with :mod:`megatron_scir.convert.keymap`, cast and
queued into safetensors shards of at most ``max_shard_bytes``. Peak memory is one layer plus one
shard (plus the embedding and output layer, ``[V, h]`` each, at the start and the end). The folder
is written under ``<out>.incomplete`` and renamed when complete.

Reads megatron-scir checkpoints (the model config comes from their metadata) and Megatron-LM /
NeMo 2 Llama-family checkpoints (the caller passes the model config; every shape is checked).
Runs on one rank without collectives, so a training job can export from rank 0.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from megatron_scir.checkpoint.atomic import commit
from megatron_scir.checkpoint.errors import CheckpointError
from megatron_scir.checkpoint.layout import (
    check_model_shapes,
    inspect_checkpoint,
    load_global_tensors,
)
from megatron_scir.checkpoint.locate import resolve_checkpoint
from megatron_scir.checkpoint.metadata import (
    ASSETS_DIR,
    METADATA_FILE,
    check_same_model,
    read_metadata,
)
from megatron_scir.config import Config, ModelConfig
from megatron_scir.convert.hf_config import hf_config_dict
from megatron_scir.convert.hf_io import (
    DEFAULT_MAX_SHARD_BYTES,
    SafetensorsWriter,
    copy_assets,
    staging_dir,
)
from megatron_scir.convert.keymap import TensorMap, iter_tensor_maps, to_hf
from megatron_scir.models.shapes import DTYPE_NAMES, torch_dtype


def _export_model(ckpt: Path, cfg: Config | None) -> tuple[ModelConfig, dict | None]:
    """The model config to export with, and the HF config.json stored at import (if any)."""
    template_path = ckpt / ASSETS_DIR / "config.json"
    template = json.loads(template_path.read_text()) if template_path.is_file() else None
    if (ckpt / METADATA_FILE).is_file():
        saved = read_metadata(ckpt).config.model
        if cfg is not None:
            check_same_model(saved, cfg.model, ckpt)
        return saved, template
    if cfg is None:
        raise CheckpointError(
            f"{ckpt} has no {METADATA_FILE} (a Megatron-LM or NeMo 2 checkpoint?): pass the "
            "model config (--config PRESET_OR_YAML plus model.* overrides)"
        )
    return cfg.model, template


def _layer_groups(m: ModelConfig) -> list[tuple[int | None, list[TensorMap]]]:
    """Tensors read together: the embedding; each layer's; the final norm and output layer."""
    return [
        (layer, [entry for entry, _ in group])
        for layer, group in itertools.groupby(iter_tensor_maps(m), key=lambda item: item[1])
    ]


def export_to_hf(
    ckpt_dir: str | Path,
    out_dir: str | Path,
    *,
    dtype: str | None = None,
    cfg: Config | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    progress: bool = True,
) -> Path:
    """Write the Hugging Face folder of checkpoint ``ckpt_dir`` to ``out_dir``.

    Args:
        ckpt_dir: a megatron-scir, Megatron-LM (save or ``iter_*`` dir) or NeMo 2 checkpoint.
        out_dir: must not exist, or be empty.
        dtype: ``float32``/``bfloat16``/``float16`` (or ``fp32``/``bf16``/``fp16``); None: the
            checkpoint's ``model.params_dtype``.
        cfg: the model config, required for checkpoints without megatron-scir metadata.
        max_shard_bytes: largest safetensors shard.
        progress: show a progress bar over the HF tensors.

    Returns:
        ``out_dir``: safetensors weights (vocabulary padding stripped), config.json, and the
        tokenizer files stored in the checkpoint's ``hf/``.
    """
    from tqdm import tqdm  # lazy: tqdm costs ~45 ms, only while exporting

    ckpt = resolve_checkpoint(ckpt_dir)
    m, template = _export_model(ckpt, cfg)
    if dtype and dtype not in DTYPE_NAMES:
        raise CheckpointError(f"--dtype {dtype!r}: expected one of bf16, fp16, fp32")
    name = DTYPE_NAMES[dtype or m.params_dtype].value
    out_dtype = torch_dtype(name)
    config_json = hf_config_dict(m, dtype=name, template=template)
    contents = inspect_checkpoint(ckpt)
    check_model_shapes(contents, m)
    staging = staging_dir(out_dir)
    writer = SafetensorsWriter(staging, max_shard_bytes=max_shard_bytes)
    total = sum(len(entry.hf) for entry, _ in iter_tensor_maps(m))
    with tqdm(total=total, desc="mcore → hf", unit="tensor", disable=not progress) as bar:
        for layer, entries in _layer_groups(m):
            tensors = load_global_tensors(contents, [e.mcore for e in entries], layer)
            for entry in entries:
                hf_tensors = to_hf(entry, tensors.pop(entry.mcore), m, layer=layer)
                for hf_name, tensor in hf_tensors.items():
                    writer.add(hf_name, tensor.to(out_dtype))
                    bar.update()
    writer.close()
    (staging / "config.json").write_text(json.dumps(config_json, indent=2, sort_keys=True) + "\n")
    if (ckpt / ASSETS_DIR).is_dir():
        copy_assets(ckpt / ASSETS_DIR, staging)
    return commit(staging, out_dir)
