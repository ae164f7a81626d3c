"""Hugging Face folders: sharded safetensors in and out, tokenizer assets, atomic output folders."""

from __future__ import annotations

import json

import pytest
import torch

from megatron_scir.checkpoint.atomic import commit
from megatron_scir.convert.errors import ConversionError
from megatron_scir.convert.hf_io import (
    INDEX_FILE,
    SafetensorsReader,
    SafetensorsWriter,
    asset_files,
    staging_dir,
)
from megatron_scir.testing.hf import tiny_hf_llama


def test_reader_reads_a_sharded_folder_through_its_index(tmp_path):
    model = tiny_hf_llama(tmp_path, max_shard_size="40KB")
    assert (tmp_path / INDEX_FILE).is_file()
    state = model.state_dict()
    with SafetensorsReader(tmp_path) as reader:
        assert sorted(reader.names()) == sorted(state)
        for name, tensor in state.items():
            assert reader.shape(name) == tuple(tensor.shape)
            assert torch.equal(reader.get(name), tensor)


def test_reader_refuses_a_folder_without_safetensors(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ConversionError, match=r"no model.safetensors .*\.bin weights"):
        SafetensorsReader(tmp_path)


def test_writer_keeps_shards_under_the_limit_and_indexes_them(tmp_path):
    tensors = {f"t{i}": torch.full((256,), float(i)) for i in range(10)}  # 1 KiB each
    writer = SafetensorsWriter(tmp_path, max_shard_bytes=3 * 1024)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.close()
    shards = sorted(tmp_path.glob("model-*-of-00004.safetensors"))
    assert len(shards) == 4 and files == [p.name for p in shards] + [INDEX_FILE]
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert index["metadata"]["total_size"] == 10 * 1024
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    with SafetensorsReader(tmp_path) as reader:
        assert all(torch.equal(reader.get(n), t) for n, t in tensors.items())
    assert not list(tmp_path.glob("*.partial"))


def test_writer_with_one_shard_writes_model_safetensors_without_index(tmp_path):
    writer = SafetensorsWriter(tmp_path)
    writer.add("w", torch.ones(3))
    assert writer.close() == ["model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_asset_files_are_the_tokenizer_and_generation_config(tmp_path):
    tiny_hf_llama(tmp_path, tokenizer=True)
    names = {p.name for p in asset_files(tmp_path)}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= names
    assert not names & {"config.json", "model.safetensors"}


def test_output_folder_is_staged_refuses_non_empty_targets_and_drops_stale_staging(tmp_path):
    out = tmp_path / "export"
    stale = tmp_path / "export.incomplete"
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x")
    staging = staging_dir(out)
    assert staging == stale and not any(staging.iterdir()) and not out.exists()
    (staging / "config.json").write_text("{}")
    assert commit(staging, out) == out and (out / "config.json").is_file()
    assert not stale.exists()
    with pytest.raises(ConversionError, match="already exists and is not empty"):
        staging_dir(out)
