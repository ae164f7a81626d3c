"""The seed stage's DataModule: instruction data and judge data as one SFT set (SCIR_SPEC §7).

As SRLM's IFT + EFT: an instruction example is trained on its response (and EOS); a judge
example is the judge prompt J(x, a, b) or J(x, y) trained to produce its verdict token
(``judge.verdict_texts[0]`` for "A", ``[1]`` for "B") or its score token
(``judge.score_texts[score]``), then EOS. The verdict/score ids are the in-context ids the SCIR
judge is later read at, so the seed stage teaches exactly the tokens that are scored.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from megatron_scir.config import Config
from megatron_scir.data.collate import collate_examples
from megatron_scir.data.datamodule import STAGES, EncodedItems, MicroBatchDataModule
from megatron_scir.data.encode import EncodedExample
from megatron_scir.data.errors import DataError
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


class SftDataModule(MicroBatchDataModule):
    """SFT micro-batches ``tokens``/``position_ids``/``labels``/``loss_mask`` ``[b, S]``.

    b = ``train.micro_batch_size`` examples, each micro-batch padded to its own longest example
    (at most ``layout.seq_length``, rounded up to ``layout.pad_multiple``); runs
    ``train.sft_epochs`` epochs over instruction + judge examples shuffled together.

    Args:
        cfg: The run config (``data``, ``judge``, ``train``).
        tokenizer: The tokenizer.
        layout: The budget and padding: a SCIR layout with judge rows
            (``MicroBatchLayout.from_config(cfg, with_judge=True)``), since instruction and
            judge examples share the policy and judge budgets.
        dp_rank: This rank's data-parallel index.
        dp_size: Data-parallel size.
        sft_path: Instruction JSONL ({"prompt", "response"}); default ``data.seed_sft``.
        judge_path: Judge JSONL (pairwise or pointwise); default ``data.seed_judge``.
        consumed_samples: Examples (all DP ranks) already trained on, from a checkpoint.
    """

    def __init__(
        self,
        cfg: Config,
        tokenizer: Tokenizer,
        *,
        layout: MicroBatchLayout,
        dp_rank: int,
        dp_size: int,
        sft_path: str | os.PathLike | None = None,
        judge_path: str | os.PathLike | None = None,
        consumed_samples: int = 0,
    ) -> None:
        super().__init__(
            cfg,
            tokenizer,
            layout=layout,
            dp_rank=dp_rank,
            dp_size=dp_size,
            consumed_samples=consumed_samples,
        )
        sft_path = sft_path if sft_path is not None else cfg.data.seed_sft
        judge_path = judge_path if judge_path is not None else cfg.data.seed_judge
        if sft_path is None and judge_path is None:
            raise DataError(
                "the seed SFT stage has no data: set data.seed_sft and/or data.seed_judge "
                "(or iteration.seed_sft=false to skip the stage)"
            )
        self.sft_path = None if sft_path is None else Path(sft_path)
        self.judge_path = None if judge_path is None else Path(judge_path)
        self.num_instruction_examples = 0
        self.num_judge_examples = 0

    @property
    def num_train_steps(self) -> int:
        """Optimizer steps: ``train.sft_epochs`` × steps per epoch (train_iters is for SCIR)."""
        return self.cfg.train.sft_epochs * (
            len(self._require(self._train, "fit")) // self.global_batch_size
        )

    def setup(self, stage: str = "fit") -> None:
        """Read, validate and tokenise the instruction and judge examples.

        Raises:
            DataError: a bad record, or more examples over the budgets than
                ``data.max_truncated_fraction`` allows.
        """
        if stage not in STAGES:
            raise DataError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        if stage != "fit":
            return
        items: list[Any] = []
        if self.sft_path is not None:
            records = self._read(self.sft_path, "sft")
            items += self._encode("instruction", records).items
            self.num_instruction_examples = len(records)
        if self.judge_path is not None:
            records = self._read(self.judge_path, "judge")
            items += self._encode("judge_example", records).items
            self.num_judge_examples = len(records)
        self._train = EncodedItems(items)
        self._check_truncation("seed examples")
        logger.info("%s", self.summary())

    def _sample_length(self, example: EncodedExample) -> int:
        return len(example.ids)

    def _collate_fn(self, **_unused) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
        return functools.partial(
            collate_examples, pad_multiple=self.layout.pad_multiple, pad_id=self.tokenizer.pad_id
        )
