"""Chat data as people hold it (docs/data.md): JSONL, JSON, Parquet, ``save_to_disk`` folders and
``hf:`` datasets; ``messages`` conversations and ``prompt``/``chosen``/``rejected`` preference
rows; ``data.columns`` renames; conversations through the chat templates, the prompt budget and
the judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from megatron_scir.data import DataError, SftDataModule, read_records
from megatron_scir.data.chat import ChatFormat
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.data.prompts import fit_prompt
from megatron_scir.data.records import Message, PairRecord, prompt_text

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

SYSTEM = {"role": "system", "content": "You answer in one word."}


def _turns(*texts: str) -> list[dict]:
    roles = ("user", "assistant")
    return [{"role": roles[i % 2], "content": t} for i, t in enumerate(texts)]


# UltraFeedback-binarized's shape: prompt (string), chosen / rejected (message lists)
ULTRAFEEDBACK = [
    {
        "prompt": question,
        "prompt_id": f"q{i}",
        "chosen": _turns(question, good),
        "rejected": _turns(question, bad),
        "score_chosen": 8.0,
        "score_rejected": 3.0,
    }
    for i, (question, good, bad) in enumerate(
        [
            ("What color is the sea?", "Blue.", "Red."),
            ("What color is the sky at noon?", "Blue.", "Green."),
            ("Is salt in the sea?", "Yes.", "No."),
            ("What makes the sky red at dusk?", "Light scattering.", "Rocks."),
            ("Where does sea salt come from?", "Rivers carry it from rocks.", "The sky."),
            ("Is the sea salty?", "Yes, it is.", "No, never."),
        ]
    )
]
CONVERSATIONS = [
    {"id": "c1", "messages": [SYSTEM, *_turns("Sea color?", "Blue.", "And the sky?")]},
    {"id": "c2", "messages": _turns("Is salt in the sea?", "Yes.", "Why?", "Rivers.")},
    {"id": "c3", "messages": _turns("One word for blue?")},
]


def write_all_forms(root: Path, rows: list[dict]) -> dict[str, str]:
    """The same rows as JSONL, JSON, Parquet, a save_to_disk folder and an hf: dataset."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "rows.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), root / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(root / "disk"))
    hub = root / "hub"
    hub.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), hub / "train-00000-of-00001.parquet")
    return {
        "jsonl": str(root / "rows.jsonl"),
        "json": str(root / "rows.json"),
        "parquet": str(root / "rows.parquet"),
        "disk": str(root / "disk"),
        "hub": f"hf:{hub}:train",
    }


@pytest.fixture
def ultrafeedback(tmp_path) -> dict[str, str]:
    return write_all_forms(tmp_path / "uf", ULTRAFEEDBACK)


@pytest.mark.parametrize("kind", ["pairs", "judge", "sft", "prompts"])
def test_every_source_form_gives_the_same_records(ultrafeedback, kind):
    read = {form: read_records(spec, kind)[0] for form, spec in ultrafeedback.items()}
    assert all(records == read["jsonl"] for records in read.values())
    assert len(read["jsonl"]) == len(ULTRAFEEDBACK)
    where = {form: records[2].where for form, records in read.items()}
    assert where["jsonl"].endswith("rows.jsonl:3") and where["parquet"].endswith("parquet:row 3")


def test_preference_rows_are_labelled_pairs_in_both_orders(ultrafeedback):
    pairs, report = read_records(ultrafeedback["parquet"], "pairs")
    assert report.shapes == {"preference": len(ULTRAFEEDBACK)} and "preference" in report.summary()
    for pair, row in zip(pairs, ULTRAFEEDBACK, strict=True):
        assert isinstance(pair, PairRecord) and pair.prompt == row["prompt"]
        assert pair.prompt_id == row["prompt_id"]
        chosen = pair.response_1 if pair.label == 1 else pair.response_2
        assert chosen == row["chosen"][-1]["content"]
    assert {p.label for p in pairs} == {1, 2}  # neither position is always the better one
    judge, _ = read_records(ultrafeedback["parquet"], "judge")
    for record, pair in zip(judge, pairs, strict=True):
        assert record.verdict == "AB"[pair.label - 1] and record.response_a == pair.response_1
    sft, _ = read_records(ultrafeedback["parquet"], "sft")
    assert [r.response for r in sft] == [row["chosen"][-1]["content"] for row in ULTRAFEEDBACK]


def test_messages_rows_keep_the_conversation_up_to_the_last_user_turn(tmp_path):
    forms = write_all_forms(tmp_path / "conv", CONVERSATIONS)
    prompts, report = read_records(forms["parquet"], "prompts")
    assert report.shapes == {"messages": 3}
    assert read_records(forms["jsonl"], "prompts")[0] == prompts
    c1, c2, c3 = (p.prompt for p in prompts)
    assert c1[0] == Message("system", SYSTEM["content"])
    assert c1[-1] == Message("user", "And the sky?")
    assert c2[-1] == Message("user", "Why?") and len(c2) == 3  # the final answer left out
    assert c3 == "One word for blue?"  # one user turn alone is a plain prompt
    sft, _ = read_records(forms["jsonl"], "sft", on_bad_record="skip")
    assert [r.response for r in sft] == ["Rivers."]  # c1 and c3 end with a user turn


def test_identical_micro_batches_from_jsonl_parquet_and_save_to_disk(
    ultrafeedback, make_cfg, sp_tokenizer
):
    batches = {}
    for form in ("jsonl", "parquet", "disk"):
        cfg = make_cfg("train.micro_batch_size=2", "train.global_batch_size=4")
        dm = SftDataModule(
            cfg,
            sp_tokenizer,
            layout=MicroBatchLayout.from_config(cfg, with_judge=True),
            dp_rank=0,
            dp_size=1,
            sft_path=ultrafeedback[form],
            judge_path=ultrafeedback[form],
        )
        dm.setup("fit")
        batches[form] = [{k: v.tolist() for k, v in b.items()} for b in dm.train_dataloader()]
    assert batches["jsonl"] and batches["parquet"] == batches["jsonl"] == batches["disk"]


def test_columns_rename_source_fields(tmp_path):
    rows = [{"instruction": "Sea color?", "output": "Blue."}]
    path = write_all_forms(tmp_path / "alpaca", rows)["parquet"]
    (record,), _ = read_records(path, "sft", columns=["prompt=instruction", "response=output"])
    assert (record.prompt, record.response) == ("Sea color?", "Blue.")


def test_a_mapped_column_that_does_not_exist_is_one_line_naming_it_and_close_ones(tmp_path):
    path = write_all_forms(tmp_path / "alpaca", [{"instruction": "Sea?", "output": "Blue."}])
    with pytest.raises(DataError) as error:
        read_records(path["jsonl"], "sft", columns=["prompt=instructions", "response=output"])
    message = str(error.value)
    assert "\n" not in message and "'instructions'" in message and "close: instruction" in message
    with pytest.raises(DataError, match="FIELD=COLUMN"):
        read_records(path["jsonl"], "sft", columns=["prompt"])


def test_a_row_of_no_known_shape_names_the_file_row_and_the_shapes_expected(tmp_path):
    path = write_all_forms(tmp_path / "bad", [{"question": "Sea?", "answer": "Blue."}])
    with pytest.raises(DataError) as error:
        read_records(path["parquet"], "sft")
    message = str(error.value)
    assert message.startswith(f"{path['parquet']}:row 1: missing field")
    assert '{"messages"}' in message and '"chosen"' in message and "\n" not in message
    bad_turn = [{"messages": [{"role": "robot", "content": "hi"}]}]
    path = write_all_forms(tmp_path / "bad_turn", bad_turn)
    with pytest.raises(DataError, match=r"rows.jsonl:1: bad message: messages\[0\]: role 'robot'"):
        read_records(path["jsonl"], "prompts")


def test_missing_sources_and_splits_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.parquet", "prompts")
    with pytest.raises(DataError, match="hf:NAME:SPLIT"):
        read_records("hf:only-a-name", "prompts")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ULTRAFEEDBACK)})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="holds the splits train: name one as"):
        read_records(tmp_path / "dd", "pairs")
    assert len(read_records(f"{tmp_path / 'dd'}:train", "pairs")[0]) == len(ULTRAFEEDBACK)


# ------------------------------------------------------------------ conversations, rendered

CONVERSATION = (
    Message("system", "Be brief."),
    Message("user", "Sea color?"),
    Message("assistant", "Blue."),
    Message("user", "And the sky?"),
)


def test_plain_renders_turns_and_a_single_turn_as_before(sp_tokenizer):
    chat = ChatFormat("plain", sp_tokenizer)
    single = chat.render((Message("user", "Hi?"),))
    assert chat.render("Hi?") == single == "User: Hi?\n\nAssistant:\n"
    assert chat.render(CONVERSATION) == (
        "System: Be brief.\n\nUser: Sea color?\n\nAssistant:\nBlue.\n\nUser: And the sky?\n\n"
        "Assistant:\n"
    )
    with pytest.raises(DataError, match="needs data.chat_template=plain or tokenizer"):
        ChatFormat("Q: {prompt}\nA:", sp_tokenizer).render(CONVERSATION)


def test_the_tokenizer_template_renders_the_messages(hf_tokenizer):
    chat = ChatFormat("tokenizer", hf_tokenizer)
    messages = [{"role": m.role, "content": m.content} for m in CONVERSATION]
    expected = hf_tokenizer._tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert chat.render(CONVERSATION) == expected


def test_a_long_conversation_loses_its_oldest_turns_first_and_keeps_the_system_turn(sp_tokenizer):
    chat = ChatFormat("plain", sp_tokenizer)
    whole = len(chat.encode(chat.render(CONVERSATION)))
    last_only = chat.render((CONVERSATION[0], CONVERSATION[-1]))
    fitted = fit_prompt(chat, CONVERSATION, len(chat.encode(last_only)))
    assert fitted.truncated and fitted.length == whole and fitted.text == last_only
    tight = fit_prompt(chat, CONVERSATION, len(chat.encode(last_only)) - 2)
    assert tight.text.startswith("System: Be brief.\n\nUser: ")
    assert tight.text.endswith("sky?\n\nAssistant:\n")


def test_the_judge_sees_the_whole_conversation():
    assert prompt_text(CONVERSATION) == (
        "System: Be brief.\n\nUser: Sea color?\n\nAssistant: Blue.\n\nUser: And the sky?"
    )
    assert prompt_text("Hi?") == "Hi?"


# ------------------------------------------------------------------ large pools: a slice only


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
def test_keep_returns_a_slice_of_the_valid_records_and_counts_them_all(tmp_path, form):
    rows = [{"id": f"p{i}", "prompt": f"question {i}?"} for i in range(50)]
    rows[3]["prompt"] = "   "  # bad: skipped, so valid record 3 is row 5 (p4)
    path = write_all_forms(tmp_path / "pool", rows)[form]
    records, report = read_records(path, "prompts", on_bad_record="skip", keep=range(3, 6))
    assert [r.id for r in records] == ["p4", "p5", "p6"]
    assert report.num_records == 49 and report.num_skipped == 1
    whole, _ = read_records(path, "prompts", on_bad_record="skip")
    assert records == whole[3:6]
    dup = write_all_forms(tmp_path / "dup", [*rows[:3], *rows[4:10], rows[1]])[form]
    with pytest.raises(DataError, match="duplicate id 'p1'"):  # checked outside the slice too
        read_records(dup, "prompts", keep=range(2))


def test_a_pointwise_judge_reads_preference_rows_as_two_scored_records(ultrafeedback):
    records, report = read_records(ultrafeedback["parquet"], "judge", judge_scores=5)
    assert len(records) == 2 * len(ULTRAFEEDBACK) and report.shapes == {"preference": 6}
    pairs = zip(records[::2], records[1::2], strict=True)
    for row, (chosen, rejected) in zip(ULTRAFEEDBACK, pairs, strict=True):
        assert (chosen.response, chosen.score) == (row["chosen"][-1]["content"], 5)
        assert (rejected.response, rejected.score) == (row["rejected"][-1]["content"], 0)
