"""Budgets a run cannot get wrong: pairs and seed examples that would be cut to fit the token
budgets are refused at DataModule setup, before training, unless data.max_truncated_fraction
allows the cut."""

from __future__ import annotations

import logging
import re

import pytest

from megatron_scir.config import ConfigError
from megatron_scir.data import ChatFormat, DataError, ScirDataModule, SftDataModule
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.data.truncation import TruncationStats, check_truncation

SHORT = "the sea is wide"
LONG = "please explain why the sky is blue in simple words for a child " * 5
JUDGE_TAIL = "Answer with a single letter, A or B.\n\nAssistant:\n"
BUDGETS = {"data.max_prompt_length": 32, "data.max_response_length": 32}


def pair(i: int, prompt: str = SHORT, response: str = "blue") -> dict:
    return {
        "pair_id": f"p{i}:0:1",
        "prompt_id": f"p{i}",
        "prompt": prompt,
        "response_1": response,
        "response_2": "the sky",
    }


@pytest.fixture
def scir(make_cfg, sp_tokenizer, write_jsonl):
    def build(rows: list[dict], *overrides: str) -> ScirDataModule:
        cfg = make_cfg(*overrides)
        dm = ScirDataModule(
            cfg, sp_tokenizer, layout=MicroBatchLayout.for_training(cfg), dp_rank=0,
            dp_size=1, train_path=write_jsonl("pairs.jsonl", rows),
        )  # fmt: skip
        dm.setup("fit")
        return dm

    return build


def three_long_prompts_of_ten() -> list[dict]:
    return [pair(i, prompt=LONG + "why " * i if i in (2, 5, 7) else SHORT) for i in range(10)]


def test_pairs_over_the_prompt_budget_are_refused_with_the_count_the_longest_and_the_key(scir):
    with pytest.raises(DataError) as refused:
        scir(three_long_prompts_of_ten())
    message = str(refused.value)
    assert "3 of 10 pairs (30.0%) do not fit the token budgets" in message
    assert "more than data.max_truncated_fraction=0.0 allows" in message
    # the longest (pair p7: its prompt has the most words), where it is and the budget it needs
    match = re.search(
        r"over data.max_prompt_length=32: (\S+) \(pair 'p7:0:1'\), (\d+) tokens", message
    )
    assert match and match[1].endswith("pairs.jsonl:8"), message
    assert f"Raise data.max_prompt_length to {match[2]} " in message
    assert "set data.max_truncated_fraction=0.3 to cut them to fit" in message
    assert "data.max_response_length" not in message  # the responses fit


def test_the_explicit_fraction_trains_on_the_cut_pairs_and_warns_before_training(scir, caplog):
    with caplog.at_level(logging.WARNING):
        dm = scir(three_long_prompts_of_ten(), "data.max_truncated_fraction=0.3")
    stats = dm.encoder.stats
    assert (stats.num_items, stats.num_items_truncated, stats.num_prompts_truncated) == (10, 3, 3)
    assert "3 of 10 pairs (30.0%) do not fit the token budgets and are cut to fit" in caplog.text
    assert all(len(item.prompt) <= 32 for item in dm._train.items)
    with pytest.raises(DataError, match="3 of 10 pairs"):
        scir(three_long_prompts_of_ten(), "data.max_truncated_fraction=0.29")


def test_a_response_whose_text_would_be_cut_is_refused_naming_the_response_budget(scir):
    rows = [pair(i) for i in range(3)] + [pair(3, response=LONG)]
    with pytest.raises(DataError) as refused:
        scir(rows, "data.judge_max_length=512")
    message = str(refused.value)
    assert "1 of 4 pairs (25.0%)" in message
    assert re.search(
        r"over data.max_response_length=32: \S+pairs.jsonl:4 \(pair 'p3:0:1'\)", message
    )
    assert "data.max_prompt_length" not in message and "data.judge_max_length" not in message


def test_a_complete_response_that_fills_the_budget_loses_only_its_eos_and_is_not_a_cut(
    scir, sp_tokenizer, make_cfg
):
    cfg = make_cfg()
    chat = ChatFormat(cfg.data.chat_template, sp_tokenizer)
    prompt = chat.render(SHORT)
    # a response text of exactly max_response_length tokens after the prompt: no room for EOS
    response = next(
        LONG[:c].rstrip()
        for c in range(len(LONG), 0, -1)
        if len(chat.encode(prompt + LONG[:c].rstrip())) - len(chat.encode(prompt))
        == cfg.data.max_response_length
    )
    dm = scir([pair(i, response=response) for i in range(4)], "data.judge_max_length=512")
    stats = dm.encoder.stats
    assert (stats.num_eos_dropped, stats.num_responses_truncated, stats.num_items_truncated) == (
        4,
        0,
        0,
    )


def test_pairs_whose_judge_rows_would_be_cut_are_refused_at_setup(scir):
    # the policy rows fit their budgets; the judge rows (template 177 tokens) do not fit 200
    rows = [pair(i, response="blue " * 8) for i in range(4)]
    with pytest.raises(DataError) as refused:
        scir(rows, "data.judge_max_length=200")
    message = str(refused.value)
    assert "4 of 4 pairs (100.0%)" in message
    match = re.search(
        r"over data.judge_max_length=200: \S+ \(pair 'p0:0:1'\), (\d+) tokens", message
    )
    assert match and int(match[1]) > 200, message
    assert f"Raise data.judge_max_length to {match[1]} " in message
    assert "max_prompt_length" not in message and "max_response_length" not in message
    # allowed, the rows are cut and the verdict position is still right after the template's
    # tail: the last token of every judge row
    dm = scir(rows, "data.judge_max_length=200", "data.max_truncated_fraction=1.0")
    assert dm.encoder.stats.num_judge_truncated == 8  # both orders of every pair
    for item in dm._train.items:
        for row in item.judge:
            assert len(row) <= 200
            assert dm.tokenizer.decode(row.tolist()).endswith(JUDGE_TAIL)


def test_seed_judge_examples_that_would_be_cut_are_refused_naming_file_and_line(
    make_cfg, sp_tokenizer, write_jsonl
):
    judge = [
        {"prompt": "Why?", "response_a": "Light.", "response_b": "Cheese.", "verdict": "A"},
        {"prompt": LONG, "response_a": LONG, "response_b": LONG, "verdict": "B"},
    ]
    cfg = make_cfg("train.micro_batch_size=1", "train.global_batch_size=2")
    dm = SftDataModule(
        cfg, sp_tokenizer, layout=MicroBatchLayout.from_config(cfg, with_judge=True), dp_rank=0,
        dp_size=1, judge_path=write_jsonl("judge.jsonl", judge),
    )  # fmt: skip
    with pytest.raises(DataError) as refused:
        dm.setup("fit")
    message = str(refused.value)
    assert "1 of 2 seed examples (50.0%)" in message
    assert re.search(r"over data.judge_max_length=256: \S+judge.jsonl:2 \(judge example\)", message)


def test_the_refusal_rounds_the_fraction_to_set_up_and_counts_an_item_once():
    stats = TruncationStats(num_items=3, num_items_truncated=1, num_prompts_truncated=1)
    stats.over_budget("data.max_prompt_length", 40, "a.jsonl:1")
    stats.over_budget("data.max_prompt_length", 40, "a.jsonl:2")  # a tie keeps the first
    stats.over_budget("data.max_response_length", 50, "a.jsonl:1")
    with pytest.raises(DataError) as refused:
        check_truncation(stats, what="pairs", budgets=BUDGETS, max_fraction=0.0)
    message = str(refused.value)
    assert "1 of 3 pairs (33.3%)" in message and "a.jsonl:2" not in message
    assert "Raise data.max_prompt_length to 40 and data.max_response_length to 50 " in message
    assert "data.max_truncated_fraction=0.334 to cut them" in message
    check_truncation(stats, what="pairs", budgets=BUDGETS, max_fraction=0.334)  # allowed


@pytest.mark.parametrize("value", [-0.1, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(make_cfg, value):
    with pytest.raises(ConfigError, match=r"data.max_truncated_fraction: .* must be in \[0, 1\]"):
        make_cfg(f"data.max_truncated_fraction={value}")


def test_the_loop_refuses_up_front_to_sample_responses_longer_than_it_trains_on(make_cfg):
    from megatron_scir.config import validate

    loop = ("generation", "training", "self_rewarding")
    cfg = make_cfg("generation.max_new_tokens=48")  # data.max_response_length=32
    validate(cfg, uses=("generation",))  # generate alone, or train alone, samples or trains
    validate(cfg, uses=("training",))
    validate(cfg, uses=("generation", "training"))  # scir evaluate: trains on no sample
    both = loop
    with pytest.raises(ConfigError, match="Raise data.max_response_length to 48"):
        validate(cfg, uses=both)
    validate(make_cfg("generation.max_new_tokens=48", "data.max_truncated_fraction=0.1"), uses=both)
    validate(make_cfg("generation.max_new_tokens=32"), uses=both)  # equal: only EOS is dropped
