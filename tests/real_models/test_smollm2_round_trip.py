"""SmolLM2-135M-Instruct (tied embeddings) through ``scir convert`` both ways: the same model back.

The real commands in subprocesses: ``hf-to-mcore`` of the folder (at TP=1: any layout loads the
checkpoint), then ``mcore-to-hf`` of that checkpoint. Every tensor of the export must equal the
original bit for bit, under the same names (no ``lm_head.weight``: the output layer is the
embedding), and ``config.json`` must say the same, ``tie_word_embeddings`` included. About 20 s
on 2 CPU cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.real_model

SCIR = [sys.executable, "-m", "megatron_scir.cli", "convert"]


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    return tensors


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    output = f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    assert done.returncode == 0, f"scir convert {cmd[4]} failed:\n{output}"


def test_hf_to_mcore_to_hf_gives_back_every_tensor_and_keeps_the_tying(smollm2_dir, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "hf"
    hf_to_mcore = ["hf-to-mcore", "--config", "tiny", "--hf-dir", str(smollm2_dir)]
    _run([*SCIR, *hf_to_mcore, "--out", str(ckpt)])
    _run([*SCIR, "mcore-to-hf", "--ckpt", str(ckpt), "--out", str(out)])

    original, exported = _tensors(smollm2_dir), _tensors(out)
    assert "lm_head.weight" not in original and sorted(exported) == sorted(original)
    differ = [name for name in original if not torch.equal(original[name], exported[name])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert json.loads((out / "config.json").read_text()) == config
