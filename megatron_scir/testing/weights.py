"""Move master (TP=1, PP=1) weights into any layout and gather gradients back (parity tests).

Megatron marks every tensor-parallel parameter with ``partition_dim`` and ``partition_stride``
(2 for the SwiGLU ``linear_fc1``: each rank holds ``[gate_r; up_r]``), and every transformer layer
knows its global ``layer_number``; these two facts are all it takes to map a local parameter to
its slice of the master model.
"""

from __future__ import annotations

import dataclasses
import re

import torch
import torch.distributed as dist

from megatron_scir.config import ParallelConfig
from megatron_scir.models import build_gpt_model, build_model_chunks, padded_vocab_size
from megatron_scir.parallel import state
from megatron_scir.parallel.state import destroy_model_parallel, initialize_model_parallel

_LAYER = re.compile(r"^(.*?decoder\.layers\.)(\d+)(\..*)$")


def global_name(chunk: torch.nn.Module, name: str) -> str:
    """Local parameter name of a (virtual) stage → the name it has in the PP=1 model."""
    match = _LAYER.match(name)
    if not match:
        return name
    layer = chunk.decoder.layers[int(match.group(2))]
    return f"{match.group(1)}{layer.layer_number - 1}{match.group(3)}"


def _shard(full: torch.Tensor, param: torch.Tensor, tp_rank: int, tp_size: int) -> torch.Tensor:
    if not getattr(param, "tensor_model_parallel", False) or tp_size == 1:
        return full
    dim, stride = param.partition_dim, param.partition_stride
    pieces = full.split(full.size(dim) // (tp_size * stride), dim=dim)
    return torch.cat(pieces[tp_rank::tp_size], dim=dim)


def load_master_weights(chunks: list[torch.nn.Module], master: dict[str, torch.Tensor]) -> None:
    """Copy this rank's slices of the PP=1/TP=1 ``master`` parameters into ``chunks``."""
    rank, size = state.tp_rank(), state.tp_size()
    with torch.no_grad():
        for chunk in chunks:
            for name, param in chunk.named_parameters():
                param.copy_(_shard(master[global_name(chunk, name)], param, rank, size))


def gather_master(chunks: list[torch.nn.Module], *, grads: bool) -> dict[str, torch.Tensor]:
    """Parameters (or their ``.grad``/``.main_grad``) of every stage as PP=1/TP=1 tensors.

    Collective over the whole world: every rank returns the full dict.
    """
    tp_group, tp = state.tp_group(), state.tp_size()
    local: dict[str, torch.Tensor] = {}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            value = _grad_of(param) if grads else param.detach()
            if getattr(param, "tensor_model_parallel", False) and tp > 1:
                parts = [torch.empty_like(value) for _ in range(tp)]
                dist.all_gather(parts, value.contiguous(), group=tp_group)
                stride, dim = param.partition_stride, param.partition_dim
                split = [p.chunk(stride, dim=dim) for p in parts]
                value = torch.cat([split[r][j] for j in range(stride) for r in range(tp)], dim=dim)
            local[global_name(chunk, name)] = value.float().clone()
    gathered: list[dict[str, torch.Tensor]] = [None] * dist.get_world_size()  # type: ignore
    dist.all_gather_object(gathered, local)
    merged: dict[str, torch.Tensor] = {}
    for part in gathered:
        merged.update(part)
    return merged


def _grad_of(param: torch.Tensor) -> torch.Tensor:
    grad = getattr(param, "main_grad", None)
    if grad is None:
        grad = param.grad
    return torch.zeros_like(param) if grad is None else grad.detach()


def build_with_master_weights(cfg, *, seed: int = 0):
    """Build ``cfg``'s layout holding the weights of the TP=1/PP=1 model made with ``seed``.

    Collective: every rank first builds the single-stage reference (as a DP replica), keeps its
    parameters as the master copy, then re-initialises Megatron's groups for ``cfg.parallel``.

    Returns:
        (chunks, master): this rank's model chunks and the master parameters by PP=1 name.
    """
    ref_cfg = dataclasses.replace(cfg, parallel=ParallelConfig())
    if padded_vocab_size(ref_cfg) != padded_vocab_size(cfg):
        raise ValueError("the layout pads the vocabulary differently from TP=1; adjust the test")
    initialize_model_parallel(ref_cfg.parallel)
    torch.manual_seed(seed)
    master = {n: p.detach().clone() for n, p in build_gpt_model(ref_cfg).named_parameters()}
    destroy_model_parallel()
    initialize_model_parallel(cfg.parallel)
    chunks = build_model_chunks(cfg)
    load_master_weights(chunks, master)
    return chunks, master
