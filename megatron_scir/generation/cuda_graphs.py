"""CUDA graphs for the static engine's decode steps (``generation.cuda_graphs=true``).

Megatron-Core 0.19 replays a decode step as CUDA graphs (one per transformer layer, keyed by
the batch size) only with flash decode under static batching: its attention raises "CUDA graphs
must use flash decode with static batching" otherwise, and flash decode is flash-attn's
``flash_attn_with_kvcache`` kernel. So the path needs CUDA and flash-attn; where either is
missing it is refused with one line (:func:`cuda_graph_blockers`). Where both exist,
:func:`decode_cuda_graphs` sets the model's config for it (``flash_decode``,
``cuda_graph_impl="local"``, per-layer inference graphs), gives each transformer layer its
``CudaGraphManager`` (the layer's own ``create_mcore_cudagraph_manager``) and puts everything
back afterwards, so training can follow in the same process. Flash decode takes no attention
mask, so the loop starts every prompt at position 0 (Megatron's layout, as with Transformer
Engine's spec) instead of left-padding them; a graph is recorded per batch size the loop
reaches (compacting the KV cache adds sizes).

Not yet run on a GPU (the lent machines have no flash-attn): docs/generation.md, GPU paths.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterator

import torch

from megatron_scir.config import ConfigError


def cuda_graph_blockers() -> list[str]:
    """What is missing for ``generation.cuda_graphs=true`` with the static engine (empty: it
    can run). Looks for flash-attn without importing it."""
    blockers = []
    if not torch.cuda.is_available():
        blockers.append("no CUDA device")
    try:
        importlib.metadata.version("flash-attn")
    except importlib.metadata.PackageNotFoundError:
        blockers.append(
            "flash-attn is not installed (Megatron-Core captures static-engine decode steps "
            "only with flash decode; pip install flash-attn --no-build-isolation)"
        )
    return blockers


def check_cuda_graphs(requested: bool) -> None:
    """Refuse ``generation.cuda_graphs=true`` where the static engine cannot capture graphs.

    Raises:
        ConfigError: naming what is missing.
    """
    blockers = cuda_graph_blockers() if requested else []
    if blockers:
        raise ConfigError(
            f"generation.cuda_graphs=true cannot run here: {'; '.join(blockers)}. "
            "Set generation.cuda_graphs=false"
        )


@contextlib.contextmanager
def decode_cuda_graphs(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Megatron's flash decode and per-layer CUDA graphs on ``model`` while inside; its config
    and layers as they were afterwards. ``enabled=False``: nothing changes."""
    if not enabled:
        yield
        return
    from megatron.core.transformer.cuda_graphs import delete_cuda_graphs  # lazy: Megatron-Core
    from megatron.core.transformer.enums import InferenceCudaGraphScope  # lazy: Megatron-Core
    from megatron.core.transformer.transformer_layer import TransformerLayer  # lazy
    from megatron.core.utils import get_attr_wrapped_model  # lazy: Megatron-Core

    config = get_attr_wrapped_model(model, "config")
    keys = ("flash_decode", "cuda_graph_impl", "inference_cuda_graph_scope")
    before = {key: getattr(config, key) for key in keys}
    config.flash_decode, config.cuda_graph_impl = True, "local"
    config.inference_cuda_graph_scope = InferenceCudaGraphScope.layer
    added = [
        layer
        for layer in model.modules()
        if isinstance(layer, TransformerLayer) and not hasattr(layer, "cudagraph_manager")
    ]
    for layer in added:  # what MegatronModule.__init__ does for cuda_graph_impl="local"
        layer.create_mcore_cudagraph_manager(config)
    try:
        yield
    finally:
        delete_cuda_graphs()
        for layer in added:
            with contextlib.suppress(AttributeError):
                del layer.cudagraph_manager
        for key, value in before.items():
            setattr(config, key, value)
