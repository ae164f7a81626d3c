"""JSONL records: every bad-record kind names file:line; skip counts; atomic writes round-trip."""

from __future__ import annotations

import pytest

from megatron_scir.data import (
    GenerationRecord,
    PairRecord,
    PairwiseJudgeRecord,
    PointwiseJudgeRecord,
    PromptRecord,
    RecordError,
    SftRecord,
    atomic_open,
    read_records,
    write_records,
)
from megatron_scir.data.errors import DataError

GOOD_PROMPT = {"id": "p1", "prompt": "Hello?"}

# (kind, bad line, problem, words of the detail); the bad line is always line 2.
BAD_LINES = [
    (
        "prompts",
        '{"id": "p2", "prompt": "x"',
        "malformed JSON",
        "Expecting ',' delimiter at column 27",
    ),
    ("prompts", "[1, 2]", "not an object", "expected a JSON object, got list"),
    ("prompts", {"id": "p2"}, "missing field", "missing field 'prompt'"),
    ("prompts", {"id": "p2", "prompt": 7}, "wrong type", "field 'prompt' must be a string"),
    ("prompts", {"id": True, "prompt": "x"}, "wrong type", "field 'id' must be a string or"),
    ("prompts", {"id": "p2", "prompt": "  \n"}, "empty text", "field 'prompt' is empty"),
    ("prompts", b'{"id": "p2", "prompt": "caf\xe9"}', "non-UTF-8", "invalid UTF-8 byte 0xe9"),
    ("prompts", {"id": "p1", "prompt": "again"}, "duplicate id", "duplicate id 'p1' (first at"),
    ("prompts", '{"id": "p2", "prompt": NaN}', "malformed JSON", "NaN is not valid JSON"),
    ("sft", {"prompt": "x", "response": ""}, "empty text", "field 'response' is empty"),
    (
        "judge",
        {"prompt": "x", "response_a": "a", "response_b": "b", "verdict": "C"},
        "wrong type",
        'field \'verdict\' must be "A" or "B"',
    ),
    (
        "judge",
        {"prompt": "x", "response": "y", "score": 2.5},
        "wrong type",
        "field 'score' must be an integer",
    ),
    ("judge", {"prompt": "x", "response": "y", "score": -1}, "bad value", "must be >= 0"),
    ("judge", {"prompt": "x", "response": "y"}, "missing field", "needs 'verdict'"),
    (
        "generations",
        {"prompt_id": "g2", "prompt": "x", "responses": ["a", "b"], "truncated": [False]},
        "bad value",
        "'truncated' has 1 entries but 'responses' has 2",
    ),
    (
        "generations",
        {"prompt_id": "g2", "prompt": "x", "responses": "a", "truncated": []},
        "wrong type",
        "field 'responses' must be an array of strings",
    ),
    (
        "pairs",
        {
            "pair_id": "q2",
            "prompt_id": "p",
            "prompt": "x",
            "response_1": "a",
            "response_2": "b",
            "label": 3,
        },
        "wrong type",
        "field 'label' must be 1 or 2",
    ),
    (
        "pairs",
        {
            "pair_id": "q2",
            "prompt_id": "p",
            "prompt": "x",
            "response_1": "a",
            "response_2": "b",
            "ref_logps_1": -3.0,
        },
        "missing field",
        "come together",
    ),
    (
        "pairs",
        {"pair_id": "q1", "prompt_id": "p", "prompt": "x", "response_1": "a", "response_2": "b"},
        "duplicate id",
        "duplicate pair_id 'q1'",
    ),
]
GOOD_FIRST = {
    "prompts": GOOD_PROMPT,
    "sft": {"prompt": "x", "response": "y"},
    "judge": {"prompt": "x", "response": "y", "score": 3},
    "generations": {"prompt_id": "g1", "prompt": "x", "responses": ["a"], "truncated": [False]},
    "pairs": {
        "pair_id": "q1",
        "prompt_id": "p",
        "prompt": "x",
        "response_1": "a",
        "response_2": "b",
    },
}


@pytest.mark.parametrize(("kind", "line", "problem", "detail"), BAD_LINES)
def test_each_bad_record_kind_raises_an_error_naming_file_line_and_problem(
    write_jsonl, kind, line, problem, detail
):
    path = write_jsonl(f"{kind}.jsonl", [GOOD_FIRST[kind], line, GOOD_FIRST[kind] | {}])
    with pytest.raises(RecordError) as err:
        read_records(path, kind)
    assert str(err.value).startswith(f"{path}:2: {problem}: ")
    assert detail in str(err.value)
    assert "data.on_bad_record=skip" in str(err.value)
    assert (err.value.path, err.value.line, err.value.problem) == (str(path), 2, problem)


def test_skip_policy_skips_counts_by_problem_and_summarises(write_jsonl):
    rows = [
        GOOD_PROMPT,
        "{bad json",
        {"id": "p2"},
        {"id": "p3", "prompt": ""},
        "",
        {"id": "p1", "prompt": "dup"},
        b"\xff\xfe",
        {"id": "p4", "prompt": "fine"},
        {"id": "p5", "prompt": 5},
    ]
    path = write_jsonl("prompts.jsonl", rows)
    records, report = read_records(path, "prompts", on_bad_record="skip")
    assert [r.id for r in records] == ["p1", "p4"]
    assert report.num_records == 2 and report.num_skipped == 6
    assert report.problems == {
        "malformed JSON": 1,
        "missing field": 1,
        "empty text": 1,
        "duplicate id": 1,
        "non-UTF-8": 1,
        "wrong type": 1,
    }
    summary = report.summary()
    assert "2 prompts records, 6 skipped" in summary
    assert f"{path}:2: malformed JSON" in summary  # the first skipped lines are shown


def test_blank_lines_and_a_utf8_bom_are_not_errors(write_jsonl):
    path = write_jsonl(
        "p.jsonl", ["\ufeff" + '{"id": 1, "prompt": "a"}', "", "   ", {"id": "2", "prompt": "b"}]
    )
    records, report = read_records(path, "prompts")
    assert [(r.id, r.where) for r in records] == [("1", f"{path}:1"), ("2", f"{path}:4")]
    assert report.num_skipped == 0


def test_integer_ids_are_normalised_so_7_and_quoted_7_are_duplicates(write_jsonl):
    path = write_jsonl("p.jsonl", [{"id": 7, "prompt": "a"}, {"id": "7", "prompt": "b"}])
    with pytest.raises(
        RecordError, match=r":2: duplicate id: duplicate id '7' \(first at line 1\)"
    ):
        read_records(path, "prompts")


def test_every_record_kind_round_trips_through_an_atomic_write(tmp_path):
    samples = {
        "prompts": [PromptRecord(id="p1", prompt="Hi ✓"), PromptRecord(id="p2", prompt="{x}")],
        "sft": [SftRecord(prompt="x", response="y\nz")],
        "judge": [
            PairwiseJudgeRecord(prompt="x", response_a="a", response_b="b", verdict="B"),
            PointwiseJudgeRecord(prompt="x", response="y", score=4),
        ],
        "generations": [
            GenerationRecord(
                prompt_id="g", prompt="x", responses=("a", ""), truncated=(False, True)
            )
        ],
        "pairs": [
            PairRecord(
                pair_id="g:0:1",
                prompt_id="g",
                prompt="x",
                response_1="a",
                response_2="b",
                label=2,
                ref_logps_1=-1.5,
                ref_logps_2=-7.0,
                truncated_2=True,
            ),
            PairRecord(pair_id="g:1:0", prompt_id="g", prompt="x", response_1="b", response_2="a"),
        ],
    }
    for kind, records in samples.items():
        path = tmp_path / f"{kind}.jsonl"
        assert write_records(path, records) == len(records)
        back, _ = read_records(path, kind)
        assert back == records
        assert [r.where for r in back] == [f"{path}:{i + 1}" for i in range(len(records))]


def test_unset_optional_pair_fields_are_left_out_of_the_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_records(
        path, [PairRecord(pair_id="a", prompt_id="p", prompt="x", response_1="1", response_2="2")]
    )
    assert path.read_text() == (
        '{"pair_id": "a", "prompt_id": "p", "prompt": "x", "response_1": "1", "response_2": "2"}\n'
    )


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "prompts.jsonl"
    write_records(path, [PromptRecord(id="old", prompt="kept")])

    def rows():
        yield {"id": "new", "prompt": "never visible"}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_records(path, rows())
    assert [r.id for r in read_records(path, "prompts")[0]] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["prompts.jsonl"]


def test_atomic_open_creates_parent_directories(tmp_path):
    with atomic_open(tmp_path / "a" / "b" / "f.bin") as fh:
        fh.write(b"ok")
    assert (tmp_path / "a" / "b" / "f.bin").read_bytes() == b"ok"


def test_reading_a_missing_file_or_an_unknown_kind_is_a_clear_error(tmp_path, write_jsonl):
    with pytest.raises(DataError, match="does not exist .*prompts records"):
        read_records(tmp_path / "missing.jsonl", "prompts")
    with pytest.raises(DataError, match="unknown record kind 'prompt'"):
        read_records(write_jsonl("x.jsonl", [GOOD_PROMPT]), "prompt")
