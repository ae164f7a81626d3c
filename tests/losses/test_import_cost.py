"""Importing the SCIR math and the forward-step module does not import Megatron-Core, and the
tensor math (rewards, losses) does not import the data package."""

from __future__ import annotations

import subprocess
import sys


def test_losses_rewards_vocab_parallel_and_forward_step_import_without_megatron():
    code = (
        "import sys\n"
        "import megatron_scir.losses, megatron_scir.rewards\n"
        "data = sorted(m for m in sys.modules if m.startswith('megatron_scir.data'))\n"
        "assert not data, data\n"
        "import megatron_scir.parallel.vocab_parallel, megatron_scir.parallel.reductions\n"
        "import megatron_scir.training.forward_step\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] == 'megatron')\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
