"""What a checkpoint's metadata and ``hf/`` assets fix: the model section and the tokenizer."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from megatron_scir.checkpoint import (
    ASSETS_DIR,
    CheckpointError,
    check_same_model,
    config_for_checkpoint,
    read_metadata,
    tokenizer_config_from_checkpoint,
)
from megatron_scir.checkpoint.metadata import FORMAT_VERSION, CheckpointMetadata, write_metadata
from megatron_scir.config import load_config
from megatron_scir.config.errors import UserError
from megatron_scir.convert.errors import ConversionError


def _write_checkpoint(directory, cfg, assets=()):
    directory.mkdir(parents=True)
    metadata = CheckpointMetadata(
        format_version=FORMAT_VERSION,
        iteration=3,
        step=5,
        config=cfg,
        padded_vocab_size=256,
        layout={"tensor_model_parallel_size": 1},
        contents=("model", "extra_state"),
        assets=tuple(assets),
    )
    write_metadata(directory, metadata)
    if assets:
        (directory / ASSETS_DIR).mkdir()
        for name in assets:
            (directory / ASSETS_DIR / name).write_text("{}")
    return directory


def test_metadata_reads_back_what_was_written(tmp_path):
    ckpt = _write_checkpoint(tmp_path / "ckpt", load_config("tiny"))
    meta = read_metadata(ckpt)
    assert (meta.iteration, meta.step, meta.config) == (3, 5, load_config("tiny"))
    assert meta.contents == ("model", "extra_state")


def test_config_for_checkpoint_takes_the_model_section_from_the_checkpoint(tmp_path):
    saved = load_config("tiny", ["model.ffn_hidden_size=128"])
    ckpt = _write_checkpoint(tmp_path / "ckpt", saved)
    cfg = config_for_checkpoint(ckpt, "tiny", ["model.params_dtype=bfloat16"])
    assert cfg.model.ffn_hidden_size == 128 and cfg.model.params_dtype == "bfloat16"
    assert config_for_checkpoint(tmp_path, "tiny") == load_config("tiny")  # no metadata


def test_another_model_is_refused_naming_the_field(tmp_path):
    saved = load_config("tiny").model
    other = dataclasses.replace(saved, num_layers=3)
    with pytest.raises(CheckpointError, match="model.num_layers is 2 there, 3 in the config"):
        check_same_model(saved, other, tmp_path)


@pytest.mark.parametrize(
    ("assets", "kind", "path"),
    [
        (("config.json", "tokenizer.json", "tokenizer_config.json"), "hf", "hf"),
        (("tokenizer.model",), "sentencepiece", "hf/tokenizer.model"),
    ],
    ids=["hf", "sentencepiece"],
)
def test_tokenizer_comes_from_the_checkpoints_assets(tmp_path, assets, kind, path):
    ckpt = _write_checkpoint(tmp_path / "ckpt", load_config("tiny"), assets)
    cfg = tokenizer_config_from_checkpoint(load_config("tiny"), ckpt)
    assert (cfg.data.tokenizer_type, cfg.data.tokenizer_path) == (kind, str(ckpt / path))


def test_tokenizer_path_of_the_config_wins_and_no_assets_change_nothing(tmp_path):
    ckpt = _write_checkpoint(tmp_path / "ckpt", load_config("tiny"), ("tokenizer.json",))
    own = load_config("tiny", ["data.tokenizer_path=/tok.model"])
    assert tokenizer_config_from_checkpoint(own, ckpt) == own
    bare = _write_checkpoint(tmp_path / "bare", load_config("tiny"), ("config.json",))
    assert tokenizer_config_from_checkpoint(load_config("tiny"), bare) == load_config("tiny")


def test_checkpoint_and_conversion_errors_are_user_errors():
    assert issubclass(CheckpointError, UserError) and issubclass(ConversionError, UserError)


def _loaded_after(imports: str, prefixes: tuple[str, ...]) -> list[str]:
    """Modules under ``prefixes`` a fresh interpreter holds after running ``imports``."""
    code = (
        f"import json, sys\n{imports}\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=120, capture_output=True, text=True
    )
    return json.loads(done.stdout)


def test_importing_the_package_and_its_metadata_imports_neither_torch_nor_megatron():
    imports = "import megatron_scir.checkpoint.metadata, megatron_scir.checkpoint.locate"
    assert _loaded_after(imports, ("torch", "megatron.")) == []


def test_the_checkpoint_package_imports_none_of_its_callers_nor_megatron_core():
    imports = "from megatron_scir.checkpoint import atomic, errors, io, layout, locate, metadata"
    callers = tuple(f"megatron_scir.{p}" for p in ("data", "generation", "training", "convert"))
    assert _loaded_after(imports, (*callers, "megatron.core")) == []
