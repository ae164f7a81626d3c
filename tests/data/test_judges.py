"""Judge formats: rendering, in-context candidate ids, judge rows and log-odds (SCIR_SPEC §2)."""

from __future__ import annotations

import dataclasses
import math
import shlex

import pytest
import torch

from megatron_scir.config import JudgeConfig, load_config
from megatron_scir.config.choices import JudgeKind
from megatron_scir.data import ChatFormat, DataError, SentencePieceTokenizer, SingleTokenError
from megatron_scir.data.judges import (
    JUDGE_FORMATS,
    JudgeFormat,
    PairwiseJudge,
    PointwiseJudge,
    judge_format,
)
from megatron_scir.data.records import PairwiseJudgeRecord, PointwiseJudgeRecord
from megatron_scir.data.tokenizer import HFTokenizer
from megatron_scir.testing.tokenizers import build_tiny_hf_tokenizer, train_tiny_sentencepiece


@pytest.fixture(scope="module")
def sp_chat(tmp_path_factory) -> ChatFormat:
    tok = SentencePieceTokenizer(train_tiny_sentencepiece(tmp_path_factory.mktemp("sp")))
    return ChatFormat("plain", tok)


@pytest.fixture(scope="module")
def hf_chat(tmp_path_factory) -> ChatFormat:
    tok = HFTokenizer(build_tiny_hf_tokenizer(tmp_path_factory.mktemp("hf")))
    return ChatFormat("tokenizer", tok)


def pairwise(**changes) -> PairwiseJudge:
    return PairwiseJudge(dataclasses.replace(JudgeConfig(), **changes))


def test_every_judge_kind_has_a_format_and_the_factory_builds_the_configured_one():
    assert set(JUDGE_FORMATS) == set(JudgeKind)
    for kind, cls in JUDGE_FORMATS.items():
        assert issubclass(cls, JudgeFormat) and cls.kind == kind
        fmt = judge_format(JudgeConfig(kind=kind))
        assert isinstance(fmt, cls)
        template = getattr(fmt.judge, cls.template_key)
        assert all("{" + name + "}" in template for name in cls.placeholders)


def test_pairwise_template_shows_the_first_response_as_a():
    fmt = pairwise(pairwise_template="Q: {prompt}\nA: {response_a}\nB: {response_b}\n")
    assert fmt.render("x", "y1", "y2") == "Q: x\nA: y1\nB: y2\n"


def test_placeholders_inside_user_text_are_not_substituted_again():
    fmt = pairwise(pairwise_template="{prompt}|{response_a}|{response_b}")
    out = fmt.render("say {response_b}", "{prompt}", "ok {x} }{")
    assert out == "say {response_b}|{prompt}|ok {x} }{"


def test_pointwise_template_fills_prompt_and_response():
    fmt = PointwiseJudge(JudgeConfig(pointwise_template="Rate {response} for {prompt}: {score}"))
    assert fmt.render("x", "y") == "Rate y for x: {score}"
    with pytest.raises(ValueError, match="shows 1 response"):
        fmt.render("x", "y1", "y2")


def test_judge_text_is_the_chat_wrapped_instruction_plus_verdict_prefix(sp_chat):
    fmt = pairwise(
        verdict_prefix="Verdict: ", pairwise_template="J {prompt} {response_a} {response_b}"
    )
    assert fmt.judge_text(sp_chat, "x", "a", "b") == "User: J x a b\n\nAssistant:\nVerdict: "


def test_verdict_ids_are_the_tokens_a_and_b_add_after_the_judge_prompt(sp_chat):
    fmt = pairwise()
    ids = fmt.candidate_ids(sp_chat)
    tok = sp_chat.tokenizer
    assert tok.pieces(ids) == ["A", "B"]  # after "\n": no word-initial "▁"
    context = fmt.probe_text(sp_chat)
    for text, token in zip(fmt.candidate_texts, ids, strict=True):
        assert sp_chat.encode(context + text) == sp_chat.encode(context) + [token]


def test_a_verdict_written_with_a_leading_space_becomes_the_word_initial_token(sp_chat):
    ids = pairwise(verdict_prefix="Answer:", verdict_texts=[" A", " B"]).candidate_ids(sp_chat)
    assert sp_chat.tokenizer.pieces(ids) == ["▁A", "▁B"]
    assert set(ids).isdisjoint(pairwise().candidate_ids(sp_chat))


def test_a_verdict_that_is_several_tokens_fails_naming_the_texts_and_ids(sp_chat):
    with pytest.raises(SingleTokenError) as err:
        pairwise(verdict_texts=["Better", "Worse"]).candidate_ids(sp_chat)
    message = str(err.value)
    assert "'Better' does not add exactly one token" in message
    assert "Assistant:\\n'" in message  # the end of the rendered prompt it follows
    assert "ids [" in message and "judge.verdict_texts" in message


def test_a_prefix_ending_in_a_space_fails_naming_the_override_values_that_work(sp_chat):
    # "Answer: " + "A" encodes as "Answer:" + "▁A": the prefix's space merges into the verdict
    with pytest.raises(SingleTokenError) as err:
        pairwise(verdict_prefix="Answer: ").candidate_ids(sp_chat)
    message = str(err.value)
    assert "judge.verdict_prefix ends with ' '" in message
    fix = message.rsplit("put the space into the texts instead: ", 1)[1]
    assert fix == """judge.verdict_prefix=Answer: 'judge.verdict_texts=[" A", " B"]'"""
    judge = load_config(None, shlex.split(fix)).judge
    assert sp_chat.tokenizer.pieces(judge_format(judge).candidate_ids(sp_chat)) == ["▁A", "▁B"]


def test_no_override_values_are_named_when_moving_the_space_does_not_help(sp_chat):
    # the tiny model has no "▁0".."▁5": neither "Score: " + "0" nor "Score:" + " 0" is one token
    judge = JudgeConfig(kind="pointwise", verdict_prefix="Score: ")
    with pytest.raises(SingleTokenError) as err:
        judge_format(judge).candidate_ids(sp_chat)
    assert "'0' does not add exactly one token" in str(err.value)
    assert "put the space into the texts" not in str(err.value)


def test_a_verdict_the_tokenizer_does_not_know_fails_as_unknown(sp_chat):
    with pytest.raises(SingleTokenError, match=r"\['é'\] become the unknown token"):
        pairwise(verdict_texts=["é", "B"]).candidate_ids(sp_chat)


def test_score_ids_are_one_distinct_token_per_score(sp_chat):
    ids = PointwiseJudge(JudgeConfig()).candidate_ids(sp_chat)
    assert sp_chat.tokenizer.pieces(ids) == ["0", "1", "2", "3", "4", "5"]
    assert judge_format(JudgeConfig(kind="pointwise")).candidate_ids(sp_chat) == ids


def test_verdict_ids_with_the_hf_chat_template(hf_chat):
    ids = judge_format(JudgeConfig()).candidate_ids(hf_chat)
    assert hf_chat.tokenizer.pieces(ids) == ["A", "B"]


@pytest.mark.parametrize(
    ("kind", "position_debias", "expected"),
    [
        ("pairwise", "mean_prob", (("x", "y1", "y2"), ("x", "y2", "y1"))),
        ("pairwise", "mean_logit", (("x", "y1", "y2"), ("x", "y2", "y1"))),
        ("pairwise", "none", (("x", "y1", "y2"),)),
        ("pointwise", "mean_prob", (("x", "y1"), ("x", "y2"))),
        ("pointwise", "none", (("x", "y1"), ("x", "y2"))),
    ],
)
def test_the_judge_rows_of_a_pair_follow_the_kind_and_the_debias_setting(
    kind, position_debias, expected
):
    fmt = judge_format(JudgeConfig(kind=kind, position_debias=position_debias))
    assert fmt.pair_fields("x", "y1", "y2") == expected
    assert fmt.rows_per_pair == len(expected)


def test_pairwise_log_odds_split_the_two_orders_or_read_one():
    logps = torch.log(torch.tensor([[0.6, 0.2], [0.1, 0.3], [0.5, 0.5], [0.2, 0.4]]))
    odds_12, odds_21 = pairwise().log_odds(logps, num_pairs=2)
    torch.testing.assert_close(odds_12, torch.tensor([math.log(3.0), math.log(1 / 3)]))
    torch.testing.assert_close(odds_21, torch.tensor([0.0, math.log(0.5)]))
    odds, none = pairwise(position_debias="none").log_odds(logps[:2], num_pairs=2)
    assert none is None and odds.shape == (2,)


def test_pointwise_log_odds_are_the_expected_score_difference_over_the_temperature():
    # y1 rows are certain of score 2, y2 rows of score 0 and 1: (2 − 0)/0.5 and (2 − 1)/0.5.
    logps = torch.full((4, 3), -1e4)
    logps[[0, 1, 2, 3], [2, 2, 0, 1]] = 0.0
    fmt = PointwiseJudge(JudgeConfig(score_texts=["0", "1", "2"], score_temperature=0.5))
    odds, none = fmt.log_odds(logps, num_pairs=2)
    assert none is None
    torch.testing.assert_close(odds, torch.tensor([4.0, 2.0]))


def test_seed_judge_records_give_their_fields_and_target_candidate():
    pair = PairwiseJudgeRecord(prompt="x", response_a="a", response_b="b", verdict="B", where="f:1")
    assert pairwise().example(pair) == (("x", "a", "b"), 1)
    point = PointwiseJudgeRecord(prompt="x", response="y", score=5, where="f:2")
    assert PointwiseJudge(JudgeConfig()).example(point) == (("x", "y"), 5)
    with pytest.raises(DataError, match=r"f:2: score 5 has no text: .* 0..2"):
        PointwiseJudge(JudgeConfig(score_texts=["0", "1", "2"])).example(point)
