"""A job without ``--config`` runs a pretrained model with the ``chat`` preset, whose budgets fit
the model's positions; the toy model keeps ``tiny``. Real loads: tiny transformers Llama folders
and a checkpoint written by the real ``scir convert hf-to-mcore``."""

from __future__ import annotations

import subprocess
import sys

import pytest

from megatron_scir.config import ConfigError
from megatron_scir.config.validate import TRAINING
from megatron_scir.recipe.model import default_preset, load_run_config
from megatron_scir.testing.hf import tiny_hf_llama


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    tiny_hf_llama(root / "long", tokenizer=True)  # 2048 positions
    tiny_hf_llama(root / "short", tokenizer=True, max_position_embeddings=768)
    return root


def _budgets(cfg):
    d = cfg.data
    return (
        d.max_prompt_length,
        d.max_response_length,
        d.judge_max_length,
        cfg.generation.max_new_tokens,
    )


def test_an_hf_folder_without_config_gets_chat_budgets_and_the_tokenizers_template(hf_dirs):
    cfg = load_run_config(None, [], hf_dir=str(hf_dirs / "long"))
    assert _budgets(cfg) == (512, 512, 2048, 480)  # new tokens under the response budget
    assert cfg.data.chat_template == "tokenizer" and cfg.data.tokenizer_type == "hf"
    assert cfg.model.max_position_embeddings == 2048  # the model section is the folder's


def test_an_explicit_preset_is_kept_as_is(hf_dirs):
    cfg = load_run_config("tiny", [], hf_dir=str(hf_dirs / "short"))
    assert _budgets(cfg) == (32, 32, 320, 32)


def test_chat_budgets_shrink_to_a_model_with_fewer_positions(hf_dirs):
    short = str(hf_dirs / "short")
    assert _budgets(load_run_config(None, [], hf_dir=short)) == (384, 384, 768, 384)
    assert _budgets(load_run_config("chat", [], hf_dir=short)) == (384, 384, 768, 384)
    # a budget set on the command line is kept; the other takes the rest
    cfg = load_run_config(None, ["data.max_prompt_length=600"], hf_dir=short)
    assert _budgets(cfg) == (600, 168, 768, 168)
    cfg = load_run_config(None, ["generation.max_new_tokens=16"], hf_dir=short)
    assert _budgets(cfg) == (384, 384, 768, 16)


def test_a_budget_set_past_the_models_positions_is_refused_not_shrunk(hf_dirs):
    with pytest.raises(ConfigError, match="data.judge_max_length"):
        load_run_config(
            None, ["data.judge_max_length=4096"], hf_dir=str(hf_dirs / "short"), uses=(TRAINING,)
        )


def test_a_converted_checkpoint_carries_its_tokenizer_and_gets_chat(hf_dirs, tmp_path):
    ckpt = tmp_path / "ckpt"
    done = subprocess.run(
        [sys.executable, "-m", "megatron_scir.cli", "convert", "hf-to-mcore",
         "--hf-dir", str(hf_dirs / "short"), "--out", str(ckpt)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert default_preset(ckpt=ckpt) == "chat"
    assert default_preset() == "tiny"  # a random init is the toy model
    for cfg in (
        load_run_config(None, [], ckpt=str(ckpt)),
        load_run_config(None, [f"checkpoint.load={ckpt}"]),
    ):
        assert _budgets(cfg) == (384, 384, 768, 384)
        assert cfg.data.tokenizer_type == "hf" and cfg.data.tokenizer_path.endswith("hf")
