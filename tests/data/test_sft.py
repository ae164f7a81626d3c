"""SftDataModule: instruction and judge examples as one SFT set (seed stage, SCIR_SPEC §7)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from megatron_scir.data import DataError, SftDataModule
from megatron_scir.data.judges import PairwiseJudge, PointwiseJudge
from megatron_scir.data.layout import MicroBatchLayout

INSTRUCTIONS = [
    {"prompt": "What is the capital of France?", "response": "The capital of France is Paris."},
    {"prompt": "Write a short poem about the sea.", "response": "The sea is wide and blue."},
    {"prompt": "How do I sort a list in Python?", "response": "Use the sorted function."},
]
JUDGE = [
    {
        "prompt": "Why is the sky blue?",
        "response_a": "Light.",
        "response_b": "Cheese.",
        "verdict": "A",
    },
    {
        "prompt": "Sort a list?",
        "response_a": "No idea.",
        "response_b": "Use sorted.",
        "verdict": "B",
    },
    {"prompt": "Capital of France?", "response": "Paris.", "score": 5},
]
SHORT_POINTWISE = "Score the response from 0 to 5.\n{prompt}\n{response}\nScore:"


@pytest.fixture
def sft(make_cfg, sp_tokenizer, write_jsonl):
    def build(*overrides: str, instructions=INSTRUCTIONS, judge=JUDGE, dp_rank=0, dp_size=1):
        cfg = make_cfg("train.micro_batch_size=1", "train.global_batch_size=2", *overrides)
        # The default 5-point rubric takes ~480 tokens with the 256-piece tokenizer.
        cfg.judge = dataclasses.replace(cfg.judge, pointwise_template=SHORT_POINTWISE)
        dm = SftDataModule(
            cfg,
            sp_tokenizer,
            layout=MicroBatchLayout.from_config(cfg, with_judge=True),
            dp_rank=dp_rank,
            dp_size=dp_size,
            sft_path=write_jsonl("sft.jsonl", instructions) if instructions else None,
            judge_path=write_jsonl("judge.jsonl", judge) if judge else None,
        )
        dm.setup("fit")
        return dm

    return build


def all_rows(dm) -> list[tuple[list[int], list[int]]]:
    """(tokens, trained label ids) of every row the loader yields."""
    rows = []
    for batch in dm.train_dataloader():
        assert set(batch) == {"tokens", "position_ids", "labels", "loss_mask"}
        for tokens, labels, mask in zip(
            batch["tokens"], batch["labels"], batch["loss_mask"], strict=True
        ):
            rows.append((tokens.tolist(), labels[mask.bool()].tolist()))
    return rows


def test_sft_batches_are_tokens_positions_labels_and_mask_padded_to_the_longest(sft):
    dm = sft()
    assert dm.num_instruction_examples == 3 and dm.num_judge_examples == 3
    for batch in dm.train_dataloader():
        s = batch["tokens"].shape[1]
        longest = int((batch["tokens"] != dm.tokenizer.pad_id).sum(dim=1).max())
        assert s % 8 == 0 and longest <= s < longest + 8 and s <= dm.seq_length
        for key in ("tokens", "position_ids", "labels", "loss_mask"):
            assert batch[key].shape == (1, s)
        assert torch.equal(batch["labels"][:, :-1], batch["tokens"][:, 1:])


def test_instruction_examples_train_on_the_response_and_eos_only(sft, sp_tokenizer):
    dm = sft(judge=None, instructions=INSTRUCTIONS + INSTRUCTIONS[:1])
    trained = sorted(sp_tokenizer.decode(t) for _, t in all_rows(dm))
    assert trained == sorted(r["response"] for r in INSTRUCTIONS + INSTRUCTIONS[:1])
    assert all(t[-1] == sp_tokenizer.eos_id for _, t in all_rows(dm))


def test_judge_examples_train_on_their_verdict_or_score_token_then_eos(sft, sp_tokenizer):
    dm = sft(instructions=None, judge=JUDGE + JUDGE[:1])
    pairwise = PairwiseJudge(dm.cfg.judge)
    verdict_a, verdict_b = pairwise.candidate_ids(dm.chat)
    score_5 = PointwiseJudge(dm.cfg.judge).candidate_ids(dm.chat)[5]
    eos = sp_tokenizer.eos_id
    found = sorted(tuple(t) for _, t in all_rows(dm))
    assert found == sorted([(verdict_a, eos), (verdict_b, eos), (score_5, eos), (verdict_a, eos)])
    for tokens, trained in all_rows(dm):
        if trained[0] == verdict_b:
            text = sp_tokenizer.decode(tokens[: tokens.index(verdict_b)])
            record = JUDGE[1]
            fields = (record["prompt"], record["response_a"], record["response_b"])
            assert text == pairwise.judge_text(dm.chat, *fields)


def test_a_score_without_a_score_text_is_refused_naming_file_and_line(sft):
    judge = [*JUDGE, {"prompt": "x", "response": "y", "score": 6}]
    with pytest.raises(DataError, match=r"judge.jsonl:4: score 6 has no text: .* 0..5"):
        sft(judge=judge, instructions=None)


def test_sft_runs_sft_epochs_and_shards_over_data_parallel_ranks(sft):
    rows = [sft("train.sft_epochs=2", dp_rank=r, dp_size=2) for r in range(2)]
    assert rows[0].num_train_steps == 2 * 3  # 6 examples, global batch 2
    counts = [len(list(dm.train_dataloader())) for dm in rows]
    assert counts == [6, 6]


def test_sft_without_any_data_is_refused_with_the_settings_to_set(make_cfg, sp_tokenizer):
    with pytest.raises(DataError, match="set data.seed_sft and/or data.seed_judge"):
        cfg = make_cfg()
        SftDataModule(
            cfg, sp_tokenizer, layout=MicroBatchLayout.from_config(cfg, with_judge=True),
            dp_rank=0, dp_size=1,
        )
