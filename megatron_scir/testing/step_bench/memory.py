"""Bytes a side holds and the peak bytes one step allocates (CUDA allocator, or tracked on CPU).

Peak memory = the side's resident tensors (:func:`resident_bytes`: weights; megatron-scir's DDP
gradient buffer) + the step's peak of newly allocated tensors (:func:`peak_step_bytes`): on CUDA
the allocator's ``max_memory_allocated`` over ``memory_allocated`` at the start; on CPU the peak
sum of live tensor storages created during the step, tracked op by op by a ``TorchDispatchMode``
(:class:`NewTensorBytes`; allocator-independent; kernels' internal workspaces are not seen).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

__all__ = ["NewTensorBytes", "peak_step_bytes", "resident_bytes"]


class NewTensorBytes(TorchDispatchMode):
    """Live bytes of the tensor storages created while active, and their peak (CPU).

    An op's output is counted once per storage, unless it shares a storage with one of the op's
    inputs (a view, an in-place or ``out=`` op): tensors that existed before, such as the
    weights and the gradient buffers, are never counted here. A storage stops counting when it
    is freed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def _release(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in tree_leaves((args, kwargs)) if _is_dense(t)}
        for tensor in tree_leaves(out):
            if not _is_dense(tensor):
                continue
            storage = tensor.untyped_storage()
            if id(storage) in inputs or storage in self._seen:
                continue
            nbytes = storage.nbytes()
            self._seen[storage] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._release, nbytes)
        return out


def _is_dense(value) -> bool:
    return isinstance(value, torch.Tensor) and value.layout == torch.strided


def resident_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (weights, gradient buffers)."""
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def peak_step_bytes(step: Callable[[], object]) -> int:
    """Peak bytes newly allocated by one ``step()`` (CUDA allocator, else the dispatch mode)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start
    tracker = NewTensorBytes()
    with tracker:
        step()
    return tracker.peak
