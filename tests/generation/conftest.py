"""Shared fixtures of the generation tests: a tiny SentencePiece model trained here."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_scir.data import SentencePieceTokenizer
from megatron_scir.testing.tokenizers import train_tiny_sentencepiece


@pytest.fixture(scope="session")
def sp_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_sentencepiece(tmp_path_factory.mktemp("sp"))


@pytest.fixture(scope="session")
def sp_tokenizer(sp_model_path: Path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(sp_model_path)
