"""Judge prompt rendering and in-context verdict/score token ids (SCIR_SPEC §2)."""

from __future__ import annotations

import dataclasses

import pytest

from megatron_scir.config import JudgeConfig
from megatron_scir.data import ChatFormat, SentencePieceTokenizer, SingleTokenError
from megatron_scir.data.tokenizer import HFTokenizer
from megatron_scir.rewards import templates
from megatron_scir.testing.tokenizers import build_tiny_hf_tokenizer, train_tiny_sentencepiece


@pytest.fixture(scope="module")
def sp_chat(tmp_path_factory) -> ChatFormat:
    tok = SentencePieceTokenizer(train_tiny_sentencepiece(tmp_path_factory.mktemp("sp")))
    return ChatFormat("plain", tok)


@pytest.fixture(scope="module")
def hf_chat(tmp_path_factory) -> ChatFormat:
    tok = HFTokenizer(build_tiny_hf_tokenizer(tmp_path_factory.mktemp("hf")))
    return ChatFormat("tokenizer", tok)


def test_pairwise_template_shows_the_first_response_as_a():
    judge = JudgeConfig(pairwise_template="Q: {prompt}\nA: {response_a}\nB: {response_b}\n")
    assert templates.render_pairwise(judge, "x", "y1", "y2") == "Q: x\nA: y1\nB: y2\n"


def test_placeholders_inside_user_text_are_not_substituted_again():
    judge = JudgeConfig(pairwise_template="{prompt}|{response_a}|{response_b}")
    out = templates.render_pairwise(judge, "say {response_b}", "{prompt}", "ok {x} }{")
    assert out == "say {response_b}|{prompt}|ok {x} }{"


def test_pointwise_template_fills_prompt_and_response():
    judge = JudgeConfig(pointwise_template="Rate {response} for {prompt}: {score}")
    assert templates.render_pointwise(judge, "x", "y") == "Rate y for x: {score}"


def test_judge_text_is_the_chat_wrapped_instruction_plus_verdict_prefix(sp_chat):
    judge = JudgeConfig(verdict_prefix="Verdict: ")
    assert templates.judge_prompt_text(sp_chat, judge, "Judge this.") == (
        "User: Judge this.\n\nAssistant:\nVerdict: "
    )


def test_verdict_ids_are_the_tokens_a_and_b_add_after_the_judge_prompt(sp_chat):
    judge = JudgeConfig()
    ids = templates.verdict_token_ids(sp_chat, judge)
    tok = sp_chat.tokenizer
    assert tok.pieces(ids) == ["A", "B"]  # after "\n": no word-initial "▁"
    context = templates.probe_judge_text(sp_chat, judge)
    for text, token in zip(judge.verdict_texts, ids, strict=True):
        assert sp_chat.encode(context + text) == sp_chat.encode(context) + [token]


def test_a_verdict_written_with_a_leading_space_becomes_the_word_initial_token(sp_chat):
    spaced = dataclasses.replace(
        JudgeConfig(), verdict_prefix="Answer:", verdict_texts=[" A", " B"]
    )
    ids = templates.verdict_token_ids(sp_chat, spaced)
    assert sp_chat.tokenizer.pieces(ids) == ["▁A", "▁B"]
    assert set(ids).isdisjoint(templates.verdict_token_ids(sp_chat, JudgeConfig()))


def test_a_verdict_that_is_several_tokens_fails_naming_the_texts_and_ids(sp_chat):
    judge = dataclasses.replace(JudgeConfig(), verdict_texts=["Better", "Worse"])
    with pytest.raises(SingleTokenError) as err:
        templates.verdict_token_ids(sp_chat, judge)
    message = str(err.value)
    assert "'Better' does not add exactly one token" in message
    assert "Assistant:\\n'" in message  # the end of the rendered prompt it follows
    assert "ids [" in message and "judge.verdict_texts" in message


def test_a_verdict_the_tokenizer_does_not_know_fails_as_unknown(sp_chat):
    judge = dataclasses.replace(JudgeConfig(), verdict_texts=["é", "B"])
    with pytest.raises(SingleTokenError, match=r"\['é'\] become the unknown token"):
        templates.verdict_token_ids(sp_chat, judge)


def test_score_ids_are_one_distinct_token_per_score(sp_chat):
    ids = templates.score_token_ids(sp_chat, JudgeConfig())
    assert sp_chat.tokenizer.pieces(ids) == ["0", "1", "2", "3", "4", "5"]
    assert (
        templates.judge_candidate_token_ids(
            sp_chat, dataclasses.replace(JudgeConfig(), kind="pointwise")
        )
        == ids
    )


def test_verdict_ids_with_the_hf_chat_template(hf_chat):
    ids = templates.judge_candidate_token_ids(hf_chat, JudgeConfig())
    assert hf_chat.tokenizer.pieces(ids) == ["A", "B"]
