"""The tokenizer interface on a real SentencePiece model and a real HF tokenizer, both tiny."""

from __future__ import annotations

import pickle

import pytest
import sentencepiece

from megatron_scir.config import load_config
from megatron_scir.data import (
    DataError,
    HFTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    check_tokenizer_fits_model,
)
from megatron_scir.testing.tokenizers import build_tiny_hf_tokenizer, train_tiny_sentencepiece

TEXT = "User: Sort [3, 1, 2] in Python!\n\tThen say 'done' ~ 100% sure."


def test_tiny_sentencepiece_model_has_256_pieces_and_llama_style_special_ids(sp_tokenizer):
    tok = sp_tokenizer
    assert tok.vocab_size == 256
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    check_tokenizer_fits_model(tok, load_config("tiny").model)


def test_sentencepiece_round_trips_any_ascii_text_and_adds_bos_only_when_asked(sp_tokenizer):
    ids = sp_tokenizer.encode(TEXT)
    assert sp_tokenizer.decode(ids) == TEXT
    assert sp_tokenizer.unk_id not in ids
    assert sp_tokenizer.encode(TEXT, add_bos=True) == [sp_tokenizer.bos_id, *ids]
    assert sp_tokenizer.decode([sp_tokenizer.bos_id, *ids, sp_tokenizer.eos_id]) == TEXT


def test_generated_ids_decoded_in_context_keep_their_word_initial_space(sp_tokenizer, hf_tokenizer):
    for tok in (sp_tokenizer, hf_tokenizer):
        prefix = tok.encode("The sea is", add_bos=True)
        new = tok.encode("The sea is wide and blue")[len(prefix) - 1 :]
        assert tok.decode(new) == "wide and blue"  # alone: the leading space is lost
        assert tok.decode_continuation(prefix, new) == " wide and blue"


def test_training_the_tiny_sentencepiece_model_twice_gives_identical_files(tmp_path, sp_model_path):
    again = train_tiny_sentencepiece(tmp_path / "again")
    assert again.read_bytes() == sp_model_path.read_bytes()


def test_byte_fallback_model_encodes_non_ascii_text_losslessly(tmp_path):
    tok = SentencePieceTokenizer(train_tiny_sentencepiece(tmp_path, 512, byte_fallback=True))
    text = "naïve café → ✓ 東京"
    assert tok.decode(tok.encode(text)) == text
    with pytest.raises(ValueError, match="vocab_size >= 512"):
        train_tiny_sentencepiece(tmp_path, 256, byte_fallback=True)


def test_sentencepiece_model_without_pad_pads_with_eos(tmp_path):
    prefix = tmp_path / "nopad"
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a small text to train on", "another line of text"] * 5),
        model_prefix=str(prefix),
        vocab_size=20,
        pad_id=-1,
        minloglevel=2,
        num_threads=1,
    )
    tok = SentencePieceTokenizer(prefix.with_suffix(".model"))
    assert tok.pad_id == tok.eos_id == 2


def test_tokenizers_survive_pickling_for_worker_processes(sp_tokenizer, hf_tokenizer):
    for tok in (sp_tokenizer, hf_tokenizer):
        clone = pickle.loads(pickle.dumps(tok))
        assert clone.encode(TEXT) == tok.encode(TEXT)
        assert (clone.bos_id, clone.eos_id, clone.pad_id) == (tok.bos_id, tok.eos_id, tok.pad_id)


def test_hf_tokenizer_round_trips_text_and_reports_special_ids(hf_tokenizer):
    tok = hf_tokenizer
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 256
    ids = tok.encode(TEXT)
    assert tok.bos_id not in ids  # special tokens only when asked
    assert tok.decode(tok.encode(TEXT, add_bos=True) + [tok.eos_id]) == TEXT


def test_building_the_tiny_hf_tokenizer_twice_gives_the_same_tokenizer(tmp_path, hf_tokenizer_dir):
    again = build_tiny_hf_tokenizer(tmp_path / "again")
    assert (again / "tokenizer.json").read_text() == (
        hf_tokenizer_dir / "tokenizer.json"
    ).read_text()


def test_build_tokenizer_follows_the_data_config(sp_model_path, hf_tokenizer_dir):
    sp = build_tokenizer(load_config("tiny", [f"data.tokenizer_path={sp_model_path}"]).data)
    assert isinstance(sp, SentencePieceTokenizer)
    hf_cfg = load_config(
        "tiny", ["data.tokenizer_type=hf", f"data.tokenizer_path={hf_tokenizer_dir}"]
    )
    assert isinstance(build_tokenizer(hf_cfg.data), HFTokenizer)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "data.tokenizer_path is not set"),
        (["data.tokenizer_path=/nonexistent/tokenizer.model"], "does not exist"),
        (["data.tokenizer_type=hf", "data.tokenizer_path=/nonexistent"], "does not exist"),
    ],
)
def test_build_tokenizer_names_the_setting_when_the_tokenizer_is_missing(overrides, message):
    with pytest.raises(DataError, match=message):
        build_tokenizer(load_config("tiny", overrides).data)


def test_a_file_that_is_not_a_sentencepiece_model_is_refused_by_name(tmp_path):
    bogus = tmp_path / "tokenizer.model"
    bogus.write_text("not a model")
    with pytest.raises(DataError, match=f"{bogus} is not a SentencePiece model"):
        SentencePieceTokenizer(bogus)


@pytest.mark.parametrize(
    ("vocab", "divisible_by", "tp", "padded"),
    [
        (32000, 128, 1, 32000),
        (32000, 128, 8, 32768),
        (50257, 128, 1, 50304),
        (256, 64, 2, 256),
        (257, 64, 2, 384),
        (128256, 128, 4, 128512),
    ],
)
def test_vocab_is_padded_to_a_multiple_of_divisible_by_times_tp(vocab, divisible_by, tp, padded):
    from megatron_scir.models.shapes import padded_vocab_size

    assert padded_vocab_size(vocab, divisible_by, tp) == padded
    assert padded % (divisible_by * tp) == 0 and 0 <= padded - vocab < divisible_by * tp


def test_a_tokenizer_larger_than_the_model_vocab_is_refused_with_the_fix(sp_tokenizer):
    model = load_config("tiny", ["model.vocab_size=200"]).model
    with pytest.raises(DataError, match="set model.vocab_size=256"):
        check_tokenizer_fits_model(sp_tokenizer, model)
