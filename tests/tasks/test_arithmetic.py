"""The arithmetic oracle task: grader, near misses, the closed world's files and misconceptions,
tokenizer, judge verdicts."""

from __future__ import annotations

import dataclasses
import importlib
import random
import subprocess
import sys
from collections import Counter

import pytest

from megatron_scir.config import DataConfig, JudgeConfig, load_config
from megatron_scir.data import ChatFormat, build_tokenizer, check_tokenizer_fits_model, read_records
from megatron_scir.data.judges import PairwiseJudge
from megatron_scir.tasks.arithmetic import (
    NEAR_MISS_OFFSETS,
    PAIRWISE_JUDGE_TEMPLATE,
    TaskFiles,
    correct_answer,
    grade,
    make_prompt,
    misconceptions,
    near_miss,
    oracle_pair_label,
    parse_operands,
    write_task_files,
)

SEED = 3
# write_task_files' defaults (max_operand=9: 100 facts).
FACTS = {(a, b) for a in range(10) for b in range(10)}
COUNTS = {"sft": 2000, "judge": 2000, "prompts": 512, "eval_prompts": 100, "eval_pairs": 100}
MISCONCEPTION_RATE, MISCONCEPTION_STRENGTH = 0.3, 0.8
SFT_ERROR_RATE, JUDGE_ERROR_RATE = 0.1, 0.2


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> TaskFiles:
    return write_task_files(tmp_path_factory.mktemp("arith"), seed=SEED)


@pytest.fixture(scope="module")
def records(files: TaskFiles) -> dict[str, list]:
    kinds = {
        "sft": (files.seed_sft, "sft"),
        "judge": (files.seed_judge, "judge"),
        "prompts": (files.prompts, "prompts"),
        "eval_prompts": (files.eval_prompts, "prompts"),
        "eval_pairs": (files.eval_pairs, "pairs"),
    }
    return {name: read_records(path, kind)[0] for name, (path, kind) in kinds.items()}


@pytest.fixture(scope="module")
def wrong_answer() -> dict[tuple[int, int], int]:
    return misconceptions(seed=SEED)


@pytest.fixture(scope="module")
def chat(files: TaskFiles) -> ChatFormat:
    return ChatFormat("plain", build_tokenizer(DataConfig(tokenizer_path=str(files.tokenizer))))


def _judge_sides(r) -> tuple[str, str, bool]:
    """(correct response, wrong response, whether the verdict names the wrong one)."""
    a_correct = grade(r.prompt, r.response_a) == 1.0
    assert a_correct != (grade(r.prompt, r.response_b) == 1.0)  # exactly one is correct
    correct, wrong = (r.response_a, r.response_b) if a_correct else (r.response_b, r.response_a)
    return correct, wrong, (r.verdict == "A") != a_correct


def test_grade_recomputes_the_sum_from_the_prompt():
    prompt = make_prompt(37, 48)
    assert prompt == "What is 37 + 48?"
    assert parse_operands(prompt) == (37, 48)
    assert correct_answer(prompt) == "85"
    for right in ("85", " 85", "85\n", "85.", " 85. \n"):
        assert grade(prompt, right) == 1.0, right
    for wrong in ("84", "86", "085", "+85", "85..", "8 5", "85 apples", "", "eighty-five", "-85"):
        assert grade(prompt, wrong) == 0.0, wrong
    assert grade(make_prompt(0, 0), "0") == 1.0
    assert grade("Question: What is 120 + 7?\nAnswer A: 1", "127") == 1.0


@pytest.mark.parametrize("prompt", ["What is 3 - 4?", "hello", "What is 1 + 2? What is 3 + 4?"])
def test_grade_refuses_a_prompt_it_cannot_parse_and_names_it(prompt):
    with pytest.raises(ValueError, match=prompt.replace("?", r"\?").replace("+", r"\+")):
        grade(prompt, "7")


def test_grade_is_a_loadable_grader_hook():
    module, name = "megatron_scir.tasks.arithmetic:grade".split(":")
    hook = getattr(importlib.import_module(module), name)
    assert hook(make_prompt(2, 2), "4") == 1.0


def test_oracle_pair_label_names_the_correct_response_or_none_on_a_tie():
    prompt = make_prompt(20, 5)
    assert oracle_pair_label(prompt, "25", "26") == 1
    assert oracle_pair_label(prompt, "24", "25.") == 2
    assert oracle_pair_label(prompt, "24", "26") is None
    assert oracle_pair_label(prompt, "25", " 25") is None


def test_near_misses_are_close_wrong_and_never_negative():
    rng = random.Random(0)
    for truth in range(120):
        for _ in range(20):
            miss = near_miss(truth, rng)
            assert miss >= 0 and miss != truth and miss - truth in NEAR_MISS_OFFSETS
    assert {near_miss(0, rng) for _ in range(200)} == {1, 2, 10, 11}
    assert [near_miss(50, random.Random(7)) for _ in range(3)] == [
        near_miss(50, random.Random(7)) for _ in range(3)
    ]


def test_the_files_parse_with_the_record_readers_in_the_requested_counts(files, records):
    assert {name: len(recs) for name, recs in records.items()} == COUNTS
    assert all(path.parent == files.tokenizer.parent for path in dataclasses.astuple(files))
    assert [r.id for r in records["prompts"]] == [f"p{i:05d}" for i in range(1, 513)]
    assert [r.id for r in records["eval_prompts"]] == [f"e{i:05d}" for i in range(1, 101)]
    pairs = records["eval_pairs"]
    assert [p.prompt_id for p in pairs] == [f"q{i:05d}" for i in range(1, 101)]
    assert all(p.pair_id == f"{p.prompt_id}:0:1" for p in pairs)
    assert not list(files.tokenizer.parent.glob(".*tmp*"))  # atomic writes left nothing behind


def test_every_file_draws_from_the_closed_world_of_facts(records):
    for name in COUNTS:
        assert {parse_operands(r.prompt) for r in records[name]} == FACTS, name


@pytest.mark.parametrize("name", ["eval_prompts", "eval_pairs"])
def test_eval_files_hold_every_fact_exactly_once(records, name):
    counts = Counter(parse_operands(r.prompt) for r in records[name])
    assert set(counts) == FACTS and set(counts.values()) == {1}


@pytest.mark.parametrize(("name", "n"), [("sft", 2000), ("judge", 2000), ("prompts", 512)])
def test_cycling_files_give_each_fact_its_share(records, name, n):
    counts = Counter(parse_operands(r.prompt) for r in records[name])
    assert set(counts) == FACTS
    assert set(counts.values()) <= {n // 100, -(-n // 100)}  # n/100 rounded down or up
    # Each pass is reshuffled: the second pass is not the first pass again.
    passes = [[r.prompt for r in records[name][i : i + 100]] for i in (0, 100)]
    assert passes[0] != passes[1] and set(passes[0]) == set(passes[1])


def test_misconceptions_are_round_rate_times_the_facts_and_near_misses(wrong_answer):
    assert len(wrong_answer) == round(MISCONCEPTION_RATE * len(FACTS))
    assert set(wrong_answer) <= FACTS
    for (a, b), wrong in wrong_answer.items():
        assert wrong >= 0 and wrong - (a + b) in NEAR_MISS_OFFSETS
    assert misconceptions(seed=SEED) == wrong_answer  # deterministic
    assert misconceptions(seed=SEED + 1) != wrong_answer
    assert len(misconceptions(seed=SEED, misconception_rate=0.1)) == 10
    assert set(misconceptions(seed=SEED, max_operand=4)) <= {
        (a, b) for a in range(5) for b in range(5)
    }


def test_misconceived_facts_sft_records_state_their_one_misconception(records, wrong_answer):
    stated, total = 0, 0
    for r in records["sft"]:
        fact = parse_operands(r.prompt)
        if fact in wrong_answer:
            total += 1
            if grade(r.prompt, r.response) == 0.0:
                assert r.response == str(wrong_answer[fact]), r
                stated += 1
    assert total == 20 * len(wrong_answer)
    assert abs(stated / total - MISCONCEPTION_STRENGTH) < 0.06
    # Every misconceived fact is actually taught wrong (20 records at 0.8: all-correct ~1e-14).
    taught = {parse_operands(r.prompt) for r in records["sft"] if grade(r.prompt, r.response) == 0}
    assert set(wrong_answer) <= taught


def test_other_facts_sft_errors_are_random_near_misses_at_the_error_rate(records, wrong_answer):
    wrong = [
        r for r in records["sft"]
        if parse_operands(r.prompt) not in wrong_answer and grade(r.prompt, r.response) == 0.0
    ]
    for r in wrong:
        assert int(r.response) - sum(parse_operands(r.prompt)) in NEAR_MISS_OFFSETS
    # round(rate * num_sft) noisy positions are drawn over all records; only those that land on
    # the other facts (70% of the records) are applied: at most 200, about 140.
    noisy = round(SFT_ERROR_RATE * COUNTS["sft"])
    assert len(wrong) <= noisy
    assert abs(len(wrong) - 0.7 * noisy) < 30
    assert len({r.response for r in wrong}) > 10  # random, not one fixed answer per fact


def test_without_misconceptions_the_sft_error_count_is_exact(tmp_path):
    files = write_task_files(
        tmp_path, max_operand=4, num_sft=300, num_judge=10, num_prompts=10,
        misconception_rate=0.0, sft_error_rate=0.25,
    )
    sft, _ = read_records(files.seed_sft, "sft")
    assert sum(grade(r.prompt, r.response) == 0.0 for r in sft) == 75
    assert misconceptions(max_operand=4, misconception_rate=0.0) == {}


def test_full_strength_misconceptions_are_the_only_sft_errors(tmp_path):
    kwargs = {"seed": 11, "max_operand": 4, "misconception_rate": 0.2}
    files = write_task_files(
        tmp_path, num_sft=250, num_judge=10, num_prompts=10,
        misconception_strength=1.0, sft_error_rate=0.0, **kwargs,
    )
    sft, _ = read_records(files.seed_sft, "sft")
    expected = misconceptions(**kwargs)
    assert len(expected) == 5
    for r in sft:
        fact = parse_operands(r.prompt)
        assert r.response == str(expected.get(fact, sum(fact))), r


def test_judge_pits_the_correct_answer_against_the_misconception(records, wrong_answer):
    flipped = first_correct = 0
    for r in records["judge"]:
        fact = parse_operands(r.prompt)
        correct, wrong, is_flipped = _judge_sides(r)
        if fact in wrong_answer:
            assert wrong == str(wrong_answer[fact]), r
        else:
            assert int(wrong) - sum(fact) in NEAR_MISS_OFFSETS, r
        flipped += is_flipped
        first_correct += r.response_a == correct
    assert flipped == round(JUDGE_ERROR_RATE * COUNTS["judge"])
    assert 0.45 < first_correct / COUNTS["judge"] < 0.55


@pytest.mark.parametrize(("rate", "flipped"), [(0.0, 0), (1.0, 50), (0.5, 25)])
def test_judge_error_rate_is_exact(tmp_path, rate, flipped):
    files = write_task_files(
        tmp_path, max_operand=3, num_sft=10, num_judge=50, num_prompts=10,
        judge_error_rate=rate,
    )
    judge, _ = read_records(files.seed_judge, "judge")
    assert sum(_judge_sides(r)[2] for r in judge) == flipped


def test_eval_pairs_label_the_correct_answer_against_the_misconception(records, wrong_answer):
    for pair in records["eval_pairs"]:
        fact = parse_operands(pair.prompt)
        scores = (grade(pair.prompt, pair.response_1), grade(pair.prompt, pair.response_2))
        assert scores == ((1.0, 0.0) if pair.label == 1 else (0.0, 1.0))
        wrong = pair.response_2 if pair.label == 1 else pair.response_1
        if fact in wrong_answer:
            assert wrong == str(wrong_answer[fact]), pair
        else:
            assert int(wrong) - sum(fact) in NEAR_MISS_OFFSETS, pair
    labels = [p.label for p in records["eval_pairs"]]
    assert 0.35 < labels.count(1) / len(labels) < 0.65


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path):
    kwargs = {"num_sft": 300, "num_judge": 300, "num_prompts": 64}
    one = write_task_files(tmp_path / "one", seed=5, **kwargs)
    two = write_task_files(tmp_path / "two", seed=5, **kwargs)
    other = write_task_files(tmp_path / "other", seed=6, **kwargs)
    for a, b, c in zip(
        dataclasses.astuple(one), dataclasses.astuple(two), dataclasses.astuple(other), strict=True
    ):
        assert a.read_bytes() == b.read_bytes(), a.name
        # Eval prompts are every fact in a fixed order: the same for every seed.
        if a.name not in ("tokenizer.model", "eval_prompts.jsonl"):
            assert a.read_bytes() != c.read_bytes(), a.name


def test_tokenizer_spells_every_digit_as_its_own_piece_and_fits_the_tiny_model(chat):
    tok = chat.tokenizer
    assert tok.vocab_size == 256
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 3)
    check_tokenizer_fits_model(tok, load_config("tiny").model)
    # In the world and beyond it (digits are single pieces whatever the operands).
    for prompt, response in [("What is 9 + 8?", "17"), ("What is 37 + 48?", "85")]:
        context = chat.render(prompt)
        ids = chat.encode(context + response)
        assert tok.unk_id not in ids
        assert ids[: len(chat.encode(context))] == chat.encode(context)  # a stable prefix
        digit_pieces = [p for p in tok.pieces(ids) if any(c.isdigit() for c in p)]
        assert digit_pieces == list("".join(c for c in prompt + response if c.isdigit()))
        assert tok.decode(ids) == context + response
    # The task's words are whole pieces: short sequences.
    judge = PairwiseJudge(JudgeConfig(pairwise_template=PAIRWISE_JUDGE_TEMPLATE))
    assert len(chat.encode(chat.render("What is 9 + 9?"))) <= 20
    assert len(chat.encode(judge.judge_text(chat, "What is 9 + 9?", "18", "28"))) <= 48


def test_verdicts_derive_as_single_tokens_after_the_rendered_judge_prompt(chat, records):
    judge = PairwiseJudge(JudgeConfig(pairwise_template=PAIRWISE_JUDGE_TEMPLATE))
    ids = judge.candidate_ids(chat)  # what the data module does at start-up (SCIR_SPEC §2)
    assert len(ids) == 2 and len(set(ids)) == 2
    assert chat.tokenizer.pieces(list(ids)) == ["A", "B"]
    tok = chat.tokenizer
    for r in records["judge"][:20]:
        context = judge.judge_text(chat, r.prompt, r.response_a, r.response_b)
        add_bos = chat.add_bos(context)
        got = tuple(tok.in_context_token_id(context, v, add_bos=add_bos) for v in ("A", "B"))
        assert got == ids


@pytest.mark.parametrize(
    "changes",
    [
        {"max_operand": 0},
        {"num_sft": -1},
        {"num_prompts": -1},
        {"sft_error_rate": 1.5},
        {"judge_error_rate": -0.1},
        {"misconception_rate": 1.01},
        {"misconception_strength": -0.5},
        {"vocab_size": 64},
    ],
)
def test_bad_arguments_raise_and_write_nothing(tmp_path, changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        write_task_files(tmp_path / "out", **changes)
    assert not (tmp_path / "out").exists()


def test_importing_the_task_does_not_import_torch():
    code = "import sys, megatron_scir.tasks.arithmetic; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
