"""ScirDataModule: the fixed SCIR micro-batch layout (SCIR_SPEC §9), DP sharding and resumption."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from megatron_scir.config import ConfigError
from megatron_scir.data import DataError, RecordError, ScirDataModule
from megatron_scir.data.judges import judge_format
from megatron_scir.data.layout import MicroBatchLayout

WORDS = (
    "the sea is wide and blue answer question python sort list capital of France Paris "
    "poem quick brown fox lazy dog cat sat on mat sky why simple words child"
).split()
JUDGE_TAIL = "Answer with a single letter, A or B.\n\nAssistant:\n"


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def make_pairs(n: int, *, seed: int = 0, refs: bool = False, long_every: int = 0) -> list[dict]:
    """n pairs, two per prompt; with long_every, every long_every-th prompt's pairs are long."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        long = long_every and (i // 2) % long_every == 0
        if i % 2 == 0:
            prompt = words(rng, 40 if long else rng.randint(2, 6))
        row = {
            "pair_id": f"p{i // 2}:{i % 2}",
            "prompt_id": f"p{i // 2}",
            "prompt": prompt,
            "response_1": words(rng, 60 if long else rng.randint(1, 6)),
            "response_2": words(rng, rng.randint(1, 6)),
            "label": [1, 2, None][i % 3],
        }
        if refs:
            row |= {"ref_logps_1": -float(i), "ref_logps_2": -0.5 * i}
        rows.append(row)
    return rows


@pytest.fixture
def datamodule(make_cfg, sp_tokenizer, write_jsonl):
    def build(*overrides: str, rows=None, dp_rank=0, dp_size=1, consumed=0, tokenizer=None):
        path = write_jsonl("pairs.jsonl", rows if rows is not None else make_pairs(10))
        cfg = make_cfg(*overrides)
        dm = ScirDataModule(
            cfg,
            tokenizer or sp_tokenizer,
            layout=MicroBatchLayout.for_training(cfg),
            dp_rank=dp_rank,
            dp_size=dp_size,
            train_path=path,
            consumed_samples=consumed,
        )
        dm.setup("fit")
        return dm

    return build


def batches(dm) -> list[dict[str, torch.Tensor]]:
    return list(dm.train_dataloader())


def judge_text(dm, pair: dict, order: int) -> str:
    x, y1, y2 = pair["prompt"], pair["response_1"], pair["response_2"]
    if dm.cfg.judge.kind == "pointwise":
        fields = (x, (y1, y2)[order])
    else:
        fields = (x, y1, y2) if order == 0 else (x, y2, y1)
    return judge_format(dm.cfg.judge).judge_text(dm.chat, *fields)


LAYOUTS = [
    ([], 2),
    (["judge.position_debias=mean_logit"], 2),
    (["judge.position_debias=none"], 1),
    (
        ["judge.kind=pointwise", "data.judge_max_length=640", "model.max_position_embeddings=1024"],
        2,
    ),
]


@pytest.mark.parametrize(("overrides", "judge_rows"), LAYOUTS)
def test_every_micro_batch_is_padded_to_its_own_longest_row(datamodule, overrides, judge_rows):
    dm = datamodule(*overrides)
    k, budget, multiple = 2, dm.seq_length, dm.layout.pad_multiple
    b = k * (2 + judge_rows)
    assert dm.layout.num_rows == b and budget == max(32 + 32, dm.cfg.data.judge_max_length)
    assert not dm.layout.packed and multiple == 8  # the local spec pads rows
    loaded = batches(dm)
    assert len(loaded) == 4  # 10 pairs, global batch 4: 2 steps × 2 micro-batches
    shapes = set()
    for batch in loaded:
        s = batch["tokens"].shape[1]
        longest = int((batch["tokens"] != dm.tokenizer.pad_id).sum(dim=1).max())
        assert s % multiple == 0 and longest <= s < longest + multiple and s <= budget
        shapes.add(s)
        assert batch["tokens"].shape == batch["labels"].shape == batch["loss_mask"].shape == (b, s)
        assert batch["tokens"].dtype == batch["labels"].dtype == torch.int64
        assert batch["loss_mask"].dtype == torch.float32
        assert batch["verdict_positions"].shape == (k * judge_rows,)
        assert batch["response_lengths"].shape == (2 * k,)
        assert batch["pair_labels"].shape == batch["pair_indices"].shape == (k,)
        assert torch.equal(batch["position_ids"], torch.arange(s).expand(b, s))
        assert torch.equal(batch["labels"][:, :-1], batch["tokens"][:, 1:])
        assert (batch["labels"][:, -1] == dm.tokenizer.pad_id).all()
    assert len(shapes) > 1  # no padding to the budget


@pytest.mark.parametrize(("overrides", "judge_rows"), LAYOUTS)
def test_packed_micro_batches_hold_the_padded_rows_back_to_back(datamodule, overrides, judge_rows):
    same_order = ("data.group_by_length=false",)
    padded = batches(datamodule(*overrides, *same_order))
    dm = datamodule(*overrides, *same_order, "model.transformer_impl=sdpa")
    assert dm.layout.packed  # the sdpa spec packs by default
    pad, b = dm.tokenizer.pad_id, dm.layout.num_rows
    for rows, packed in zip(padded, batches(dm), strict=True):
        cu = packed["cu_seqlens"].tolist()
        assert packed["tokens"].shape == (1, packed["tokens"].shape[1]) and len(cu) == b + 1
        total = packed["tokens"].shape[1]
        assert total % 8 == 0 and cu[-1] <= total < cu[-1] + 8
        for row in range(b):
            start, n = cu[row], cu[row + 1] - cu[row]
            for key in ("tokens", "labels", "loss_mask"):
                assert torch.equal(packed[key][0, start : start + n], rows[key][row, :n]), key
            assert packed["labels"][0, start + n - 1] == pad  # no label across sequences
            assert torch.equal(packed["position_ids"][0, start : start + n], torch.arange(n))
        judge_starts = torch.tensor(cu[2 * 2 : b])
        assert torch.equal(packed["verdict_positions"], judge_starts + rows["verdict_positions"])
        assert (packed["tokens"][0, cu[-1] :] == pad).all() and not packed["loss_mask"][
            0, cu[-1] :
        ].any()
        for key in ("response_lengths", "pair_labels", "pair_indices"):
            assert torch.equal(packed[key], rows[key]), key


@pytest.mark.parametrize(("overrides", "judge_rows"), LAYOUTS)
def test_rows_hold_the_policy_and_judge_sequences_in_layout_order(
    datamodule, overrides, judge_rows
):
    rows = make_pairs(10)
    dm = datamodule(*overrides, rows=rows)
    tok, k = dm.tokenizer, 2
    for batch in batches(dm):
        for i, index in enumerate(batch["pair_indices"].tolist()):
            pair = rows[index]
            for side, key in enumerate(("response_1", "response_2")):
                ids = batch["tokens"][side * k + i].tolist()
                assert ids[0] == tok.bos_id
                assert tok.decode(ids) == dm.chat.render(pair["prompt"]) + pair[key]
            for order in range(judge_rows):
                ids = batch["tokens"][2 * k + order * k + i].tolist()
                assert tok.decode(ids) == judge_text(dm, pair, order)


def test_loss_mask_covers_exactly_the_response_tokens_and_their_eos(datamodule):
    rows = make_pairs(10)
    dm = datamodule(rows=rows)
    tok, k = dm.tokenizer, 2
    for batch in batches(dm):
        mask = batch["loss_mask"].bool()
        assert not mask[2 * k :].any()  # judge rows carry no policy loss
        for row in range(2 * k):
            targets = batch["labels"][row][mask[row]].tolist()
            pair = rows[batch["pair_indices"][row % k]]
            assert targets[-1] == tok.eos_id
            assert tok.decode(targets) == pair[("response_1", "response_2")[row // k]]
            assert batch["response_lengths"][row] == len(targets)
            first = int(mask[row].nonzero()[0])  # the last prompt token predicts the response
            prompt_ids = dm.chat.encode(dm.chat.render(pair["prompt"]))
            assert first == len(prompt_ids) - 1


@pytest.mark.parametrize(("overrides", "judge_rows"), LAYOUTS)
def test_verdict_position_is_the_token_right_before_the_verdict(datamodule, overrides, judge_rows):
    rows = make_pairs(10)
    dm = datamodule(*overrides, rows=rows)
    tok, k = dm.tokenizer, 2
    verdict = dm.verdict_token_ids[-1]
    text = (
        dm.cfg.judge.verdict_texts if dm.cfg.judge.kind == "pairwise" else dm.cfg.judge.score_texts
    )[-1]
    for batch in batches(dm):
        for r, pos in enumerate(batch["verdict_positions"].tolist()):
            order, i = divmod(r, k)
            ids = batch["tokens"][2 * k + r].tolist()
            pair = rows[batch["pair_indices"][i]]
            assert tok.decode(ids[: pos + 1] + [verdict]) == judge_text(dm, pair, order) + text
            assert ids[pos + 1] == tok.pad_id and ids[pos] != tok.pad_id


def test_pair_labels_and_reference_logps_come_from_the_pairs_file(datamodule):
    rows = make_pairs(12, refs=True)
    dm = datamodule(rows=rows)
    for batch in batches(dm):
        index = batch["pair_indices"].tolist()
        expected = {1: 1.0, 2: 0.0, None: -1.0}
        assert batch["pair_labels"].tolist() == [expected[rows[i]["label"]] for i in index]
        refs = [rows[i]["ref_logps_1"] for i in index] + [rows[i]["ref_logps_2"] for i in index]
        assert batch["ref_logps"].tolist() == refs
    assert "ref_logps" not in batches(datamodule())[0]


def test_long_pairs_are_truncated_responses_first_and_the_judge_tail_is_kept(datamodule):
    rows = make_pairs(8, long_every=2)
    dm = datamodule("data.max_truncated_fraction=1.0", rows=rows)  # allows the cuts
    tok, k, stats = dm.tokenizer, 2, dm.encoder.stats
    assert stats.num_prompts_truncated == 4 and stats.num_responses_truncated == 4
    assert stats.num_judge_truncated == 8  # both orders of the 4 long pairs
    for batch in batches(dm):
        for i, index in enumerate(batch["pair_indices"].tolist()):
            if (index // 2) % 2:
                continue
            policy = batch["tokens"][i].tolist()
            prompt_len = int(batch["loss_mask"][i].nonzero()[0]) + 1
            assert tok.decode(policy).startswith("User: ")  # the chat template stays whole
            assert batch["response_lengths"][i] == 32  # cut to max_response_length, no EOS
            assert tok.eos_id not in policy
            assert prompt_len <= 32
            for order in range(2):
                pos = int(batch["verdict_positions"][order * k + i])
                assert pos + 1 <= 256
                assert tok.decode(batch["tokens"][2 * k + order * k + i][: pos + 1]).endswith(
                    JUDGE_TAIL
                )


def test_a_response_merging_with_the_prompts_last_token_is_encoded_apart_and_counted(
    make_cfg, sp_tokenizer, write_jsonl
):
    rows = make_pairs(4)
    cfg = make_cfg("data.chat_template=Q: {prompt} A: ")  # ends in a space
    # (the verdict would merge with that space too: a newline prefix keeps it one token)
    cfg.judge = dataclasses.replace(cfg.judge, verdict_prefix="\n")
    dm = ScirDataModule(
        cfg, sp_tokenizer, layout=MicroBatchLayout.for_training(cfg), dp_rank=0, dp_size=1,
        train_path=write_jsonl("pairs.jsonl", rows),
    )
    dm.setup("fit")
    assert dm.encoder.stats.num_boundary_merges > 0  # "A: " + "the" would become "▁the"
    tok = dm.tokenizer
    for batch in batches(dm):
        for row in range(4):
            pair = rows[batch["pair_indices"][row % 2]]
            response = pair[("response_1", "response_2")[row // 2]]
            prompt_ids = dm.chat.encode(dm.chat.render(pair["prompt"]))
            ids = batch["tokens"][row].tolist()
            assert ids[: len(prompt_ids)] == prompt_ids  # what generation conditioned on
            assert tok.decode(ids) == dm.chat.render(pair["prompt"]) + response
            targets = batch["labels"][row][batch["loss_mask"][row].bool()].tolist()
            assert tok.decode(prompt_ids + targets) == dm.chat.render(pair["prompt"]) + response


def test_dp_ranks_get_disjoint_shards_that_cover_each_epoch(datamodule):
    rows = make_pairs(22)
    overrides = ("train.global_batch_size=8", "train.epochs=3")
    per_rank = [
        [
            b["pair_indices"].tolist()
            for b in batches(datamodule(*overrides, rows=rows, dp_rank=r, dp_size=2))
        ]
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 3 * 2 * 2  # epochs × steps × micro-batches
    for epoch in range(3):
        seen = [i for r in range(2) for mb in per_rank[r][4 * epoch : 4 * epoch + 4] for i in mb]
        assert len(seen) == len(set(seen)) == 16  # 22 pairs: 2 global batches of 8, 6 left out
    epochs = [
        {i for r in range(2) for mb in per_rank[r][4 * e : 4 * e + 4] for i in mb} for e in range(3)
    ]
    assert epochs[0] != epochs[1]  # a new shuffle every epoch


def test_resuming_from_consumed_samples_continues_on_exactly_the_next_micro_batch(datamodule):
    rows = make_pairs(22)
    full = batches(datamodule("train.epochs=2", rows=rows, dp_rank=1, dp_size=2))
    dm = datamodule("train.epochs=2", rows=rows, dp_rank=1, dp_size=2)
    steps_done = 3
    state = dm.state_dict(steps_since_resume=steps_done)
    assert state == {"consumed_samples": 3 * 4}
    resumed = datamodule("train.epochs=2", rows=rows, dp_rank=1, dp_size=2)
    resumed.load_state_dict(state)
    rest = batches(resumed)
    assert len(rest) == len(full) - steps_done  # one micro-batch per step on each of 2 ranks
    for a, b in zip(full[steps_done:], rest, strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_reference_loader_visits_every_pair_once_and_fills_the_last_micro_batches(datamodule):
    rows = make_pairs(7, refs=False)
    seen, counts = [], []
    for rank in range(2):
        dm = datamodule(rows=rows, dp_rank=rank, dp_size=2)
        loaded = list(dm.reference_dataloader(layout=MicroBatchLayout.for_reference(dm.cfg)))
        counts.append(len(loaded))
        seen += [i for b in loaded for i in b["pair_indices"].tolist()]
        # the reference pass replays the training micro-batches: the same pairs, layout and
        # padding, so that the first step ties exactly (SCIR_SPEC §4)
        assert MicroBatchLayout.for_reference(dm.cfg) == dm.layout
        trained = batches(dm)[:1]  # epoch 0 has one step of 4: one micro-batch per rank
        for a, b in zip(trained, loaded, strict=False):
            assert all(torch.equal(a[key], b[key]) for key in a if key != "ref_logps")
        assert all(b["tokens"].shape[0] == dm.layout.num_rows for b in loaded)
    assert counts == [2, 2]  # 4 micro-batches of 2 for 7 pairs, same count on both ranks
    assert sorted(i for i in seen if i >= 0) == list(range(7)) and seen.count(-1) == 1
    # fewer pairs than a global batch (an evaluation file): every pair once, in file order
    few = datamodule(rows=rows[:3])
    loaded = list(few.reference_dataloader(layout=few.layout))
    assert [b["pair_indices"].tolist() for b in loaded] == [[0, 1], [2, -1]]


def test_worker_processes_give_identical_batches_and_counts(datamodule):
    rows = make_pairs(20, seed=3, long_every=3)
    allow = "data.max_truncated_fraction=1.0"  # the long pairs are cut
    plain = datamodule(allow, rows=rows)
    workers = datamodule(allow, "data.num_workers=2", rows=rows)  # encoding pool, loader workers
    assert workers.encoder.stats == plain.encoder.stats
    assert plain.encoder.stats.num_judge_truncated > 0
    for a, b in zip(batches(plain), batches(workers), strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_hf_tokenizer_with_its_own_chat_template_builds_the_same_layout(datamodule, hf_tokenizer):
    rows = make_pairs(10)
    dm = datamodule("data.chat_template=tokenizer", rows=rows, tokenizer=hf_tokenizer)
    verdict = dm.verdict_token_ids[0]
    for batch in batches(dm):
        for r, pos in enumerate(batch["verdict_positions"].tolist()):
            pair = rows[batch["pair_indices"][r % 2]]
            ids = batch["tokens"][4 + r][: pos + 1].tolist() + [verdict]
            assert hf_tokenizer.decode(ids) == judge_text(dm, pair, r // 2) + "A"
            assert judge_text(dm, pair, 0).startswith("<|user|>\n")


def test_pairs_with_and_without_reference_logps_in_one_file_are_refused(datamodule):
    rows = make_pairs(4, refs=True)
    del rows[2]["ref_logps_1"], rows[2]["ref_logps_2"]
    with pytest.raises(DataError, match=r"pairs.jsonl:3: pair 'p1:0' has no ref_logps_1"):
        datamodule(rows=rows)


def test_a_bad_pairs_line_stops_setup_naming_file_and_line(datamodule):
    rows = make_pairs(4)
    rows[1] = json.dumps(rows[1])[:-1]
    with pytest.raises(RecordError, match=r"pairs.jsonl:2: malformed JSON"):
        datamodule(rows=rows)
    dm = datamodule("data.on_bad_record=skip", rows=rows + [rows[0] | {"pair_id": "extra"}])
    assert dm.read_reports[0].num_skipped == 1 and "1 malformed JSON" in dm.summary()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.judge_max_length=128", "pairwise judge template .* raise data.judge_max_length"),
        ("data.max_prompt_length=4", "the chat template .* raise data.max_prompt_length"),
    ],
)
def test_a_budget_smaller_than_its_template_is_refused_at_start_up(datamodule, override, message):
    with pytest.raises(ConfigError, match=message):
        datamodule(override)


def test_summary_reports_the_epoch_remainder_left_out(datamodule):
    dm = datamodule(rows=make_pairs(10))
    assert "10 training samples, 2 steps of 4; 2 samples per epoch do not fill" in dm.summary()


def test_loaders_need_setup_first_and_stages_are_checked(make_cfg, sp_tokenizer, write_jsonl):
    path = write_jsonl("pairs.jsonl", make_pairs(4))
    cfg = make_cfg()
    dm = ScirDataModule(
        cfg, sp_tokenizer, layout=MicroBatchLayout.for_training(cfg), dp_rank=0, dp_size=1,
        train_path=path,
    )
    with pytest.raises(DataError, match=r"call setup\('fit'\)"):
        dm.train_dataloader()
    with pytest.raises(DataError, match="unknown stage 'train'"):
        dm.setup("train")
    assert dm.val_dataloader() is None


def test_labelled_modes_train_on_policy_rows_only_identical_to_the_scir_policy_rows(datamodule):
    rows = make_pairs(8, seed=5, refs=True)
    scir = datamodule("data.group_by_length=false", rows=rows)
    dpo = datamodule("scir.mode=dpo", "data.group_by_length=false", rows=rows)
    assert dpo.layout.num_rows == 4 and dpo.seq_length == 64 < scir.seq_length
    pad = scir.tokenizer.pad_id
    for full, policy in zip(batches(scir), batches(dpo), strict=True):
        s = policy["tokens"].shape[1]
        assert policy["tokens"].shape == (4, s) and s <= 64 and s < full["tokens"].shape[1]
        assert policy["verdict_positions"].numel() == 0
        assert (full["tokens"][:4, s:] == pad).all() and not full["loss_mask"][:4, s:].any()
        for key in ("tokens", "labels", "loss_mask"):
            assert torch.equal(policy[key], full[key][:4, :s]), key
        for key in ("response_lengths", "pair_labels", "pair_indices", "ref_logps"):
            assert torch.equal(policy[key], full[key]), key
