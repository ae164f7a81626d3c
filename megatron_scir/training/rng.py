"""Every random state a rank draws from, captured for a checkpoint and restored on resume.

Python's ``random``, NumPy's global generator, torch's CPU generator, CUDA's generators when
present, and Megatron's model-parallel RNG tracker (dropout inside TP regions). Stored per rank
(``save_checkpoint(rank_state=...)``): with them, a resumed run draws exactly the numbers the
uninterrupted run would have drawn.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def capture_rng_state() -> dict[str, Any]:
    """This rank's generators' states (plain Python objects and CPU tensors)."""
    from megatron.core import tensor_parallel  # lazy: Megatron-Core

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` captured on this rank."""
    from megatron.core import tensor_parallel  # lazy: Megatron-Core

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
