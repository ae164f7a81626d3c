"""One prompt budget: training conditions on the very prompt ids generation sampled for."""

from __future__ import annotations

import torch

from megatron_scir.data import (
    ChatFormat,
    GenerationRecord,
    PromptRecord,
    ScirDataModule,
    build_pairs,
    write_records,
)
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.generation import PromptEncoder

LONG = "Please explain, step by step and with care, why the sea is salty and the sky is blue. " * 4


def test_a_long_prompt_is_trained_on_the_prompt_ids_generation_conditioned_on(
    make_cfg, sp_tokenizer, tmp_path
):
    cfg = make_cfg("train.global_batch_size=2", "data.max_truncated_fraction=1.0")  # cut LONG
    chat = ChatFormat(cfg.data.chat_template, sp_tokenizer)
    assert len(chat.encode(chat.render(LONG))) > 2 * cfg.data.max_prompt_length  # really cut
    sampled = PromptEncoder.from_config(cfg, sp_tokenizer).encode(PromptRecord("long", LONG))
    assert sampled.truncated and len(sampled.token_ids) <= cfg.data.max_prompt_length

    # what generation writes: the original prompt text with the responses sampled for it
    generated = GenerationRecord(
        prompt_id="long",
        prompt=LONG,
        responses=("Salt comes from rocks.", "Light scatters.", "Rivers carry salt."),
        truncated=(False, False, False),
    )
    pairs, _ = build_pairs([generated], pairs_per_prompt=2)
    assert len(pairs) == 2  # one micro-batch of k=2
    pairs_path = tmp_path / "pairs.jsonl"
    write_records(pairs_path, pairs)
    layout = MicroBatchLayout.for_training(cfg)
    data = ScirDataModule(
        cfg, sp_tokenizer, layout=layout, dp_rank=0, dp_size=1, train_path=pairs_path
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))

    prompt = torch.tensor(sampled.token_ids)
    for row in range(data.layout.num_policy_rows):  # y1 and y2 rows of both pairs
        tokens, mask = batch["tokens"][row], batch["loss_mask"][row]
        first_response_label = int(mask.nonzero()[0])  # labels[t] = tokens[t + 1]
        assert first_response_label + 1 == len(prompt)
        assert torch.equal(tokens[: len(prompt)], prompt)
