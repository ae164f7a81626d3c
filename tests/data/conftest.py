"""Shared fixtures of the data tests: tiny real tokenizers trained here, tiny configs, writers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from megatron_scir.config import Config, load_config
from megatron_scir.data import HFTokenizer, SentencePieceTokenizer
from megatron_scir.testing.tokenizers import build_tiny_hf_tokenizer, train_tiny_sentencepiece

# The default judge template takes ~200 tokens with the 256-piece tokenizer: tests give the
# judge a budget that fits it plus short fields.
TINY_DATA = [
    "data.max_prompt_length=32",
    "data.max_response_length=32",
    "data.judge_max_length=256",
    "train.micro_batch_size=2",
    "train.global_batch_size=4",
]


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="session")
def sp_tokenizer(sp_model_path: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(sp_model_path)


@pytest.fixture(scope="session")
def hf_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_hf_tokenizer(tmp_path_factory.mktemp("hf"))


@pytest.fixture(scope="session")
def hf_tokenizer(hf_tokenizer_dir: Path) -> HFTokenizer:
    return HFTokenizer(hf_tokenizer_dir)


@pytest.fixture
def make_cfg() -> Callable[..., Config]:
    """``make_cfg("judge.position_debias=none", ...)``: the tiny preset with test budgets."""

    def make(*overrides: str) -> Config:
        return load_config("tiny", [*TINY_DATA, *overrides])

    return make


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[str, list], Path]:
    """``write_jsonl(name, rows)``: rows are dicts (dumped) or raw strings/bytes (written as is)."""

    def write(name: str, rows: list) -> Path:
        path = tmp_path / name
        with open(path, "wb") as fh:
            for row in rows:
                if isinstance(row, dict):
                    row = json.dumps(row)
                fh.write(row if isinstance(row, bytes) else row.encode("utf-8"))
                fh.write(b"\n")
        return path

    return write
