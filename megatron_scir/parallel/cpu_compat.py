"""Run real Megatron-Core on CPU under gloo (tests, the laptop demo). Never used when CUDA exists.

Megatron-Core assumes a CUDA device in a handful of places (measured with 0.19.2, see
docs/parallelism.md and the shared PLATFORM notes). :func:`enable` neutralises exactly those:

- tensors created with ``device="cuda"`` / ``device=torch.cuda.current_device()`` (schedules'
  token counters, p2p shape exchange, RoPE tables, the global memory buffer) → a
  :class:`torch.overrides.TorchFunctionMode` rewrites CUDA device arguments to CPU and makes
  ``Tensor.cuda()`` a no-op;
- ``torch.cuda.current_device()`` → "cpu" (autograd's backward runs outside the mode),
  ``torch.cuda.synchronize`` → no-op, ``torch.cuda.Event`` → a wall-clock timer, streams (DDP's
  grad sync) → no-op streams;
- the CUDA RNG tracker behind ``get_cuda_rng_tracker().fork()`` → one over CPU generator states;
- ``torch.autocast("cuda")`` → ``torch.autocast("cpu")``;
- the inference p2p ``_is_cuda`` assert → accepts CPU tensors;
- the optimizer's gradient clipping (asserts ``torch.cuda.FloatTensor`` grads) → the same
  in-place scaling by ``max_norm / (total_norm + 1e-6)`` on CPU tensors;
- ``Tensor.type()`` (no argument), which the distributed optimizer compares with
  ``"torch.cuda.FloatTensor"`` and friends to sort parameters → the CUDA name of a CPU tensor.

The GPU code paths never import this module; :func:`enable` refuses to run when CUDA is available.

Gloo is also more lenient than NCCL in one way that hides real bugs: it accepts non-contiguous
tensors (a strided view of a batch, say), where NCCL fails with "Tensors must be contiguous".
:func:`enforce_contiguous_collectives` makes this process follow NCCL's rule: a
:class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every ``c10d`` op the
``torch.distributed`` functions issue (whatever alias Megatron bound them to, forward or
backward) and raises :class:`NonContiguousCollectiveError`, naming the collective, before a
non-contiguous tensor reaches gloo. The multi-process harness
(``megatron_scir.testing.distributed.run_distributed``) turns it on in every child by default.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_MODE: _CpuDeviceMode | None = None
_STRICT_MODE: _ContiguousCollectivesMode | None = None


def _to_cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return torch.device("cpu")
    dev = torch.device(device)
    return torch.device("cpu") if dev.type == "cuda" else dev


class _CpuDeviceMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU for every torch call made while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in (torch.Tensor.cuda,):
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # the distributed optimizer sorts parameters by ``param.type()`` and accepts only
            # ``torch.cuda.*Tensor`` names: report CPU tensors under their CUDA names
            name = func(*args)
            return (
                name.replace("torch.", "torch.cuda.", 1) if args[0].device.type == "cpu" else name
            )
        if func is torch.Tensor.to and args[1:] and isinstance(args[1], (str, int, torch.device)):
            if not isinstance(args[1], torch.dtype):
                args = (args[0], _to_cpu_device(args[1]), *args[2:])
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        return func(*args, **kwargs)


class _CpuEvent:
    """Stands in for ``torch.cuda.Event(enable_timing=True)``: wall-clock timing."""

    def __init__(self, *args, **kwargs) -> None:
        self._t = None

    def record(self, *args, **kwargs) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True

    def wait(self, *args, **kwargs) -> None:
        pass

    def elapsed_time(self, end: _CpuEvent) -> float:
        return (end._t - self._t) * 1000.0


class _CpuStream:
    """Stands in for a CUDA stream: CPU work is already ordered, so every wait is a no-op."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def wait_stream(self, other) -> None:
        pass

    def wait_event(self, event) -> None:
        pass

    def record_event(self, event=None):
        return event or _CpuEvent()

    def synchronize(self) -> None:
        pass


def _install_rng_tracker() -> None:
    from megatron.core.tensor_parallel import random as mrandom  # lazy: Megatron-Core

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """The Megatron RNG tracker over CPU generator states (dropout inside TP regions)."""

        def add(self, name, seed):
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self._is_initialized = True
            self.seeds_.add(seed)
            generator = torch.Generator().manual_seed(seed)
            self.states_[name] = generator.get_state()

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(orig)

    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True


def seed_rng_tracker(seed: int, *, tp_rank: int, pp_rank: int, ep_rank: int = 0) -> None:
    """The CPU counterpart of ``model_parallel_cuda_manual_seed`` (same seed offsets)."""
    from megatron.core.tensor_parallel import random as mrandom  # lazy: Megatron-Core

    tracker = mrandom._CUDA_RNG_STATE_TRACKER
    tracker.reset()
    offset = seed + 2718 + 100 * pp_rank
    tracker.add(mrandom._DATA_PARALLEL_RNG_TRACKER_NAME, seed)
    tracker.add(mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME, offset + tp_rank)
    tracker.add(mrandom._EXPERT_PARALLEL_RNG_TRACKER_NAME, offset + 1024 + 100 * ep_rank + tp_rank)


def is_enabled() -> bool:
    return _MODE is not None


@contextlib.contextmanager
def device_mode_paused():
    """Leave the CUDA-to-CPU device mode for the block, where it is the innermost torch
    function mode (else: no change).

    The mode costs a Python call for every torch op (~20 % of a CPU decode step of
    SmolLM2-135M). Code that creates no tensor on ``"cuda"`` and calls no ``Tensor.cuda()`` may
    run without it: generation's one-token decode steps (Megatron's inference path asks for
    ``torch.cuda.current_device()``, which stays "cpu"; a prefill of several tokens may build
    the local spec's default causal mask on ``"cuda"``, so it keeps the mode).
    """
    from torch.overrides import _get_current_function_mode, _pop_mode_temporarily

    if _MODE is None or _get_current_function_mode() is not _MODE:
        yield
        return
    with _pop_mode_temporarily():
        yield


def enable() -> None:
    """Enable the CPU layer for this process (idempotent). Refuses when CUDA is available."""
    global _MODE
    if _MODE is not None:
        return
    if torch.cuda.is_available():
        raise RuntimeError(
            "megatron_scir.parallel.cpu_compat is for CPU-only runs; CUDA is available here"
        )
    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.Event = _CpuEvent
    torch.cuda.Stream = _CpuStream
    torch.cuda.current_stream = lambda *a, **k: _CpuStream()
    torch.cuda.stream = lambda *a, **k: contextlib.nullcontext()
    _orig_autocast = torch.autocast.__init__

    def _autocast_init(self, device_type, *args, **kwargs):
        _orig_autocast(self, "cpu" if device_type == "cuda" else device_type, *args, **kwargs)

    torch.autocast.__init__ = _autocast_init
    _install_rng_tracker()
    _patch_inference_comm()
    _patch_grad_clipping()
    _MODE = _CpuDeviceMode()
    _MODE.__enter__()


def _patch_inference_comm() -> None:
    from megatron.core.inference import communication_utils  # lazy: Megatron-Core

    if hasattr(communication_utils, "_is_cuda"):
        communication_utils._is_cuda = lambda tensor: None


def _patch_grad_clipping() -> None:
    from megatron.core.optimizer import optimizer as moptimizer  # lazy: Megatron-Core

    def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
        attr = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [getattr(p, attr) for p in parameters if getattr(p, attr, None) is not None]
        clip_coeff = max_norm / (total_norm + 1.0e-6)
        if isinstance(clip_coeff, torch.Tensor):
            clip_coeff = clip_coeff.clamp_max(1.0)
        elif clip_coeff >= 1.0:
            return
        torch._foreach_mul_(grads, clip_coeff)

    moptimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32


class NonContiguousCollectiveError(RuntimeError):
    """A collective got a tensor NCCL would refuse ("Tensors must be contiguous")."""


# The torch.distributed function behind each c10d op, for the error message.
_COLLECTIVE_NAMES = {
    "_allgather_base_": "all_gather_into_tensor",
    "allgather_": "all_gather",
    "allgather_coalesced_": "all_gather_coalesced",
    "allgather_into_tensor_coalesced_": "all_gather_into_tensor (coalesced)",
    "allreduce_": "all_reduce",
    "allreduce_coalesced_": "all_reduce_coalesced",
    "_reduce_scatter_base_": "reduce_scatter_tensor",
    "reduce_scatter_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter_tensor (coalesced)",
    "reduce_": "reduce",
    "broadcast_": "broadcast",
    "gather_": "gather",
    "scatter_": "scatter",
    "alltoall_": "all_to_all",
    "alltoall_base_": "all_to_all_single",
    "send": "send/isend",
    "recv_": "recv/irecv",
    "recv_any_source_": "recv/irecv (any source)",
}
# ProcessGroupNCCL stages these per-rank lists through one flat buffer (newLikeFlat + copy), so
# they may be strided; it hands every other tensor to NCCL as it is.
_STAGED_ARGUMENTS = {"allgather_": "output_tensors", "reduce_scatter_": "input_tensors"}


def _tensors(value, path: str):
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}[{i}]")


class _ContiguousCollectivesMode(TorchDispatchMode):
    """Raises when a c10d op gets a tensor that is not contiguous (NCCL's check)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == "c10d":
            op = func._schema.name.split("::")[-1]
            staged = _STAGED_ARGUMENTS.get(op)
            for schema_arg, value in zip(func._schema.arguments, args, strict=False):
                if schema_arg.name != staged:
                    _check_contiguous(op, schema_arg.name, value)
            for name, value in kwargs.items():
                if name != staged:
                    _check_contiguous(op, name, value)
        return func(*args, **kwargs)


def _is_dense(tensor: torch.Tensor) -> bool:
    # NCCL's test is is_contiguous(suggest_memory_format()): channels-last layouts pass too
    if tensor.is_contiguous():
        return True
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}
    return tensor.dim() in formats and tensor.is_contiguous(memory_format=formats[tensor.dim()])


def _check_contiguous(op: str, argument: str, value) -> None:
    for path, tensor in _tensors(value, argument):
        if not _is_dense(tensor):
            raise NonContiguousCollectiveError(
                f"torch.distributed.{_COLLECTIVE_NAMES.get(op, op)} got a non-contiguous tensor "
                f"({path}: shape {tuple(tensor.shape)}, stride {tensor.stride()}); NCCL refuses "
                "it ('Tensors must be contiguous') even where gloo lets it through. Pass a "
                "contiguous tensor (.contiguous()) to the collective or to the Megatron layer "
                "that issues it."
            )


def enforce_contiguous_collectives() -> None:
    """Make every collective of this process refuse non-contiguous tensors, as NCCL does.

    Idempotent; stays on for the life of the process (the test harness's children).
    """
    global _STRICT_MODE
    if _STRICT_MODE is None:
        _STRICT_MODE = _ContiguousCollectivesMode()
        _STRICT_MODE.__enter__()


def contiguous_collectives_enforced() -> bool:
    """Whether :func:`enforce_contiguous_collectives` is on in this process."""
    return _STRICT_MODE is not None
