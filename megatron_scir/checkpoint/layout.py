"""What a torch_dist checkpoint holds, and pointing a model's sharded state dict at it.

A Megatron distributed checkpoint stores each tensor once, under its global key and shape (see
:func:`megatron_scir.models.shapes.mcore_tensor_shapes`), whatever TP/PP layout wrote it. Three
differences between the writer and the reader are bridged here, without touching the model's
modules:

- a key prefix: NeMo 2 stores the model under ``module.`` (Megatron-LM and megatron-scir: none);
- the padded vocabulary: Megatron pads to a multiple of ``make_vocab_size_divisible_by × TP``, so
  a checkpoint written at TP=8 may have more (zero or unused) vocabulary rows than the reader's
  layout; those two tensors are read whole and cut to the reader's rows;
- ``_extra_state`` objects the checkpoint lacks keep the model's own (empty) value.

Everything else must match exactly; a mismatch raises :class:`CheckpointError` naming the tensor,
the expected and the found shape. A tied model (``model.share_embeddings_and_output_weights``)
has no ``output_layer.weight`` (the last stage's copy is saved under the embeddings' key), so a
tied config and an untied checkpoint, or the reverse, are refused with the value to set.
Megatron-Core is imported inside the functions.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, LoadPlan
from torch.distributed.checkpoint.metadata import ChunkStorageMetadata
from torch.distributed.checkpoint.planner_helpers import create_read_items_for_chunk_list

from megatron_scir.checkpoint.errors import CheckpointError
from megatron_scir.config import ModelConfig
from megatron_scir.models.shapes import mcore_tensor_shapes

KNOWN_PREFIXES = ("", "module.")
VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")


@dataclass(frozen=True)
class CheckpointContents:
    """The tensors and objects of a torch_dist checkpoint, keys without the writer's prefix."""

    path: Path
    prefix: str
    """Prefix of the model keys in the checkpoint: "" or "module." (NeMo 2)."""
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]]
    """Global shape and dtype of every model tensor."""
    objects: frozenset[str]
    """Keys of the sharded objects (``_extra_state`` and the like)."""


def inspect_checkpoint(path: str | Path) -> CheckpointContents:
    """Read the tensor and object metadata of the torch_dist checkpoint at ``path``."""
    from megatron.core.dist_checkpointing.mapping import ShardedTensor  # lazy: Megatron-Core
    from megatron.core.dist_checkpointing.serialization import (  # lazy: Megatron-Core
        load_sharded_metadata,
    )

    meta = load_sharded_metadata(str(path))
    keys = {v.key for v in meta.values()}
    prefix = next((p for p in KNOWN_PREFIXES if f"{p}{VOCAB_KEYS[0]}" in keys), None)
    if prefix is None:
        prefix = next((p for p in KNOWN_PREFIXES if f"{p}{VOCAB_KEYS[1]}" in keys), "")
    tensors, objects = {}, set()
    for value in meta.values():
        if not value.key.startswith(prefix) or value.key == "common_state":
            continue
        key = value.key[len(prefix) :]
        if isinstance(value, ShardedTensor):
            tensors[key] = (tuple(value.global_shape), value.dtype)
        else:
            objects.add(key)
    return CheckpointContents(Path(path), prefix, tensors, frozenset(objects))


def check_model_shapes(contents: CheckpointContents, m: ModelConfig) -> None:
    """Every tensor of model ``m`` is in the checkpoint with its shape (vocabulary rows ≥ V).

    Raises:
        CheckpointError: naming the missing or mismatched tensor, expected and found shape.
    """
    expected = mcore_tensor_shapes(m, padded_vocab=m.vocab_size)
    _check_tied(contents, m)
    for key, shape in expected.items():
        if key not in contents.tensors:
            raise CheckpointError(
                f"{contents.path}: tensor {contents.prefix}{key} is missing (expected shape "
                f"{list(shape)}); not a Llama-family GPT checkpoint?"
            )
        found = contents.tensors[key][0]
        vocab_ok = key in VOCAB_KEYS and found[1:] == shape[1:] and found[0] >= shape[0]
        if found != shape and not vocab_ok:
            want = f"[>={shape[0]}, {shape[1]}]" if key in VOCAB_KEYS else str(list(shape))
            raise CheckpointError(
                f"{contents.path}: tensor {contents.prefix}{key}: expected shape {want} for "
                f"{_describe(m)}, found {list(found)}: the checkpoint holds another model shape"
            )


def _check_tied(contents: CheckpointContents, m: ModelConfig) -> None:
    """A tied model's checkpoint has no ``output_layer.weight``; an untied one's has it."""
    tied, has_output = m.share_embeddings_and_output_weights, VOCAB_KEYS[1] in contents.tensors
    if tied == has_output and VOCAB_KEYS[0] in contents.tensors:
        what = "its own output layer" if has_output else "no output layer (tied embeddings)"
        raise CheckpointError(
            f"{contents.path}: the checkpoint holds {what}, the config has "
            f"model.share_embeddings_and_output_weights={str(tied).lower()}: set it to "
            f"{str(not tied).lower()}"
        )


def _describe(m: ModelConfig) -> str:
    return (
        f"model.num_layers={m.num_layers}, hidden_size={m.hidden_size}, "
        f"ffn_hidden_size={m.ffn_hidden_size}, num_attention_heads={m.num_attention_heads}, "
        f"num_query_groups={m.num_query_groups}, head_dim={m.head_dim}, "
        f"vocab_size={m.vocab_size}"
    )


def retarget_for_load(sharded_sd: dict[str, Any], contents: CheckpointContents) -> None:
    """Point a model's sharded state dict (in place) at the keys and rows of ``contents``."""
    from megatron.core.dist_checkpointing.dict_utils import (  # lazy: Megatron-Core
        dict_list_map_inplace,
    )
    from megatron.core.dist_checkpointing.mapping import (  # lazy: Megatron-Core
        LocalNonpersistentObject,
        ShardedObject,
        ShardedTensor,
        ShardedTensorFactory,
    )

    def retarget(entry):
        if isinstance(entry, ShardedObject):
            if entry.key not in contents.objects:
                return LocalNonpersistentObject(entry.data)
        elif isinstance(entry, ShardedTensor):
            _check_tensor(entry, contents)
            rows = contents.tensors[entry.key][0][0]
            if entry.key in VOCAB_KEYS and rows != entry.global_shape[0]:
                return _vocab_rows_factory(entry, contents.prefix + entry.key, rows)
        elif not isinstance(entry, ShardedTensorFactory):
            return entry
        entry.key = contents.prefix + entry.key
        return entry

    dict_list_map_inplace(retarget, sharded_sd)


def _check_tensor(entry, contents: CheckpointContents) -> None:
    if entry.key not in contents.tensors:
        raise CheckpointError(
            f"{contents.path}: tensor {contents.prefix}{entry.key} is missing (expected shape "
            f"{list(entry.global_shape)})"
        )
    found = contents.tensors[entry.key][0]
    if entry.key not in VOCAB_KEYS and found != tuple(entry.global_shape):
        raise CheckpointError(
            f"{contents.path}: tensor {contents.prefix}{entry.key}: expected shape "
            f"{list(entry.global_shape)}, found {list(found)}"
        )


def _vocab_rows_factory(entry, ckpt_key: str, ckpt_rows: int):
    """Read the whole ``[ckpt_rows, h]`` tensor, keep this rank's rows of the reader's padding."""
    from megatron.core.dist_checkpointing.mapping import (  # lazy: Megatron-Core
        ShardedTensor,
        ShardedTensorFactory,
    )

    start, local_rows = entry.global_offset[0], entry.local_shape[0]
    own = entry.replica_id if isinstance(entry.replica_id, tuple) else (entry.replica_id,)
    # every holder reads the whole tensor; the main replica of the first vocabulary shard is
    # the one main replica of the whole
    replica = (start // local_rows, *own)

    def build(key, data, replica_id, flattened_range):
        full = torch.empty(ckpt_rows, *data.shape[1:], dtype=data.dtype, device=data.device)
        return ShardedTensor.from_rank_offsets(key, full, replica_id=replica)

    def merge(loaded: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(entry.data)
        end = min(start + local_rows, ckpt_rows)
        if end > start:
            out[: end - start] = loaded[start:end]
        return out

    return ShardedTensorFactory(ckpt_key, entry.data, build, merge, replica_id=entry.replica_id)


def load_global_tensors(
    contents: CheckpointContents, keys: list[str], layer: int | None = None
) -> dict[str, torch.Tensor]:
    """Global tensors ``keys``; of the layer-stacked ones only layer ``layer``'s slice.

    A stacked ``[L, out, in]`` tensor gives its ``[out, in]`` at ``layer``; other tensors are read
    whole. Reads with torch.distributed.checkpoint directly, in this process alone: no collectives
    and no process group (Megatron's own loader assumes each rank holds one shard of a full grid).
    """
    request, offsets = {}, {}
    for key in keys:
        shape, dtype = contents.tensors[key]
        name = contents.prefix + key
        if key.startswith("decoder.layers."):
            if layer is None:
                raise ValueError(f"{key} is stacked over layers: give the layer to read")
            shape, offsets[name] = (1, *shape[1:]), (layer,) + (0,) * (len(shape) - 1)
        else:
            offsets[name] = (0,) * len(shape)
        request[name] = torch.empty(shape, dtype=dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(
            request,
            storage_reader=dcp.FileSystemReader(str(contents.path)),
            planner=SliceLoadPlanner(offsets),
            no_dist=True,
        )
    return {
        key: request[contents.prefix + key].squeeze(0)
        if key.startswith("decoder.layers.")
        else request[contents.prefix + key]
        for key in keys
    }


class SliceLoadPlanner(DefaultLoadPlanner):
    """Fills each plain tensor of the state dict from the checkpoint chunk at its offsets."""

    def __init__(self, offsets: dict[str, tuple[int, ...]]) -> None:
        super().__init__(flatten_state_dict=False, flatten_sharded_tensors=False)
        self.offsets = offsets

    def create_local_plan(self) -> LoadPlan:
        items = []
        for fqn, tensor in self.state_dict.items():
            chunk = ChunkStorageMetadata(torch.Size(self.offsets[fqn]), tensor.size())
            md = self.metadata.state_dict_metadata[fqn]
            items.extend(create_read_items_for_chunk_list(fqn, md, [chunk]))
        return LoadPlan(items)

    def lookup_tensor(self, index) -> torch.Tensor:
        return self.state_dict[index.fqn]
