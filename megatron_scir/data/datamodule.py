"""NeMo-style DataModules: ``setup(stage)``, ``train_dataloader()``, ``val_dataloader()``.

:class:`ScirDataModule` serves SCIR micro-batches of pairs (layout in
:mod:`megatron_scir.data.collate`); :class:`SftDataModule` serves the seed stage's instruction and
judge examples. Both read and validate their JSONL files and tokenise everything in ``setup``
(so every bad record, every start-up problem and every cut beyond
``data.max_truncated_fraction`` surfaces before training), shard by an explicit
``dp_rank`` / ``dp_size`` (never read from torch.distributed here), shuffle per epoch with
``train.seed`` and resume exactly from ``consumed_samples`` (see
:mod:`megatron_scir.data.sampler`).
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from megatron_scir.config import Config
from megatron_scir.data.chat import ChatFormat
from megatron_scir.data.collate import collate_pairs
from megatron_scir.data.encode import EncodedPair, SequenceEncoder
from megatron_scir.data.encode_pool import encode_records
from megatron_scir.data.errors import DataError
from megatron_scir.data.jsonl import ReadReport, read_records
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.data.records import PairRecord
from megatron_scir.data.sampler import MicroBatchSampler
from megatron_scir.data.tokenizer import Tokenizer
from megatron_scir.data.truncation import JUDGE_KEY, PROMPT_KEY, RESPONSE_KEY, check_truncation

logger = logging.getLogger(__name__)


def judge_scores(cfg: Config) -> int | None:
    """K of a pointwise judge (its scores 0..K): how preference rows become seed judge data
    (chosen K, rejected 0); None for the pairwise judge (one verdict per row)."""
    return len(cfg.judge.score_texts) - 1 if cfg.judge.kind == "pointwise" else None

STAGES = ("fit", "validate")


class EncodedItems(Dataset):
    """Encoded items; index ``-1 - j`` gives a filler copy of item j (``index`` = -1)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        if i >= 0:
            return self.items[i]
        return dataclasses.replace(self.items[-1 - i], index=-1)


class MicroBatchDataModule(abc.ABC):
    """Sampling, loaders and resumption shared by the SCIR and SFT DataModules."""

    def __init__(
        self,
        cfg: Config,
        tokenizer: Tokenizer,
        *,
        layout: MicroBatchLayout,
        dp_rank: int,
        dp_size: int,
        consumed_samples: int = 0,
    ) -> None:
        self.cfg, self.tokenizer, self.layout = cfg, tokenizer, layout
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.consumed_samples = consumed_samples
        self.chat = ChatFormat(cfg.data.chat_template, tokenizer)
        self.encoder = SequenceEncoder(
            self.chat,
            cfg.judge,
            max_prompt_length=cfg.data.max_prompt_length,
            max_response_length=cfg.data.max_response_length,
            judge_max_length=cfg.data.judge_max_length,
        )
        self.read_reports: list[ReadReport] = []
        self._train: EncodedItems | None = None
        self._val: EncodedItems | None = None

    @property
    def seq_length(self) -> int:
        """S, the longest row a training micro-batch can have (``layout.seq_length``)."""
        return self.layout.seq_length

    @property
    def global_batch_size(self) -> int:
        return self.cfg.train.global_batch_size

    @property
    def num_train_steps(self) -> int:
        """Optimizer steps of the whole run: ``train.train_iters``, else epochs × steps/epoch."""
        if self.cfg.train.train_iters is not None:
            return self.cfg.train.train_iters
        return self.cfg.train.epochs * (
            len(self._require(self._train, "fit")) // self.global_batch_size
        )

    def compute_consumed_samples(self, steps_since_resume: int) -> int:
        """Samples consumed after ``steps_since_resume`` more optimizer steps (for checkpoints)."""
        return self.consumed_samples + steps_since_resume * self.global_batch_size

    def state_dict(self, steps_since_resume: int = 0) -> dict[str, int]:
        """What a checkpoint stores to resume on exactly the next sample."""
        return {"consumed_samples": self.compute_consumed_samples(steps_since_resume)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next ``train_dataloader()`` starts after ``consumed_samples``."""
        self.consumed_samples = int(state["consumed_samples"])

    def train_dataloader(self) -> DataLoader:
        """This rank's micro-batches from ``consumed_samples`` to the end of training."""
        items = self._require(self._train, "fit")
        return self._loader(items, self._sampler(items, self.num_train_steps, shuffle=None))

    def val_dataloader(self) -> DataLoader | None:
        """One ordered pass over the validation file (whole global batches), or None without one."""
        if self._val is None:
            return None
        steps = len(self._val) // self.global_batch_size
        return self._loader(self._val, self._sampler(self._val, steps, shuffle=False))

    def _sampler(
        self, items: EncodedItems, num_steps: int, *, shuffle: bool | None
    ) -> MicroBatchSampler:
        train = shuffle is None
        lengths = None
        if self.cfg.data.group_by_length:
            lengths = [self._sample_length(item) for item in items.items]
        return MicroBatchSampler(
            len(items),
            micro_batch_size=self.cfg.train.micro_batch_size,
            global_batch_size=self.global_batch_size,
            dp_rank=self.dp_rank,
            dp_size=self.dp_size,
            seed=self.cfg.train.seed,
            shuffle=self.cfg.data.shuffle if train else shuffle,
            num_steps=num_steps,
            consumed_samples=self.consumed_samples if train else 0,
            lengths=lengths,
        )

    @abc.abstractmethod
    def _sample_length(self, item: Any) -> int:
        """The length ``data.group_by_length`` groups by."""

    def _loader(self, items: EncodedItems, batch_sampler: Any, **collate_kwargs) -> DataLoader:
        return DataLoader(
            items,
            batch_sampler=batch_sampler,
            collate_fn=self._collate_fn(**collate_kwargs),
            num_workers=self.cfg.data.num_workers,
        )

    @abc.abstractmethod
    def _collate_fn(self, **kwargs) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
        """The collate function of this DataModule's micro-batch layout."""

    def _read(self, path: str | os.PathLike, kind: str) -> list[Any]:
        records, report = read_records(
            path, kind, on_bad_record=self.cfg.data.on_bad_record, columns=self.cfg.data.columns,
            judge_scores=judge_scores(self.cfg) if kind == "judge" else None,
        )
        self.read_reports.append(report)
        return records

    def _encode(self, method: str, records: Sequence[Any]) -> EncodedItems:
        return EncodedItems(
            encode_records(self.encoder, method, records, self.cfg.data.num_workers)
        )

    def _check_truncation(self, what: str) -> None:
        """Refuse, before training, a set whose share of cut items exceeds
        ``data.max_truncated_fraction`` (every rank encodes every item: all refuse alike)."""
        d = self.cfg.data
        check_truncation(
            self.encoder.stats,
            what=what,
            budgets={
                PROMPT_KEY: d.max_prompt_length,
                RESPONSE_KEY: d.max_response_length,
                JUDGE_KEY: d.judge_max_length,
            },
            max_fraction=d.max_truncated_fraction,
        )

    @staticmethod
    def _require(items: EncodedItems | None, stage: str) -> EncodedItems:
        if items is None:
            raise DataError(f"call setup({stage!r}) before asking for this data loader")
        return items

    def summary(self) -> str:
        """What setup read, skipped, truncated and what each epoch leaves out."""
        lines = [report.summary() for report in self.read_reports]
        lines.append(f"truncation: {self.encoder.stats.summary()}")
        if self._train is not None:
            dropped = len(self._train) % self.global_batch_size
            lines.append(
                f"{len(self._train)} training samples, {self.num_train_steps} steps of "
                f"{self.global_batch_size}; {dropped} samples per epoch do not fill a global "
                "batch and are left out of that epoch (a new shuffle uses them next epoch)"
            )
        return "\n".join(lines)


class ScirDataModule(MicroBatchDataModule):
    """SCIR micro-batches of unlabeled (or labeled) pairs for one self-rewarding iteration.

    Args:
        cfg: The run config (uses ``data``, ``judge`` and ``train``).
        tokenizer: The tokenizer (``build_tokenizer(cfg.data)``).
        layout: The training micro-batches' layout (``MicroBatchLayout.for_training``): their
            rows and form, and the lengths ``data.group_by_length`` groups by.
        dp_rank: This rank's data-parallel index.
        dp_size: Data-parallel size.
        train_path: The iteration's pairs JSONL.
        val_path: Optional held-out pairs JSONL.
        consumed_samples: Samples (all DP ranks) already trained on, from a checkpoint.
    """

    def __init__(
        self,
        cfg: Config,
        tokenizer: Tokenizer,
        *,
        layout: MicroBatchLayout,
        dp_rank: int,
        dp_size: int,
        train_path: str | os.PathLike,
        val_path: str | os.PathLike | None = None,
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
        self.train_path = Path(train_path)
        self.val_path = None if val_path is None else Path(val_path)
        self.pairs: list[PairRecord] = []

    @property
    def verdict_token_ids(self) -> tuple[int, ...]:
        """Token ids the judge is read at (verdicts, or scores 0..K), derived in context."""
        return self.encoder.candidate_ids(self.encoder.format)

    def setup(self, stage: str = "fit") -> None:
        """Read, validate and tokenise the pairs: ``fit`` (train + val) or ``validate`` (val).

        Raises:
            DataError: a bad record, or more pairs over the budgets than
                ``data.max_truncated_fraction`` allows (the count, the longest pair over each
                budget and the value to raise it to).
        """
        if stage not in STAGES:
            raise DataError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        if stage == "fit":
            self.pairs = self._read_pairs(self.train_path)
            self._train = self._encode("pair", self.pairs)
        if self.val_path is not None:
            self._val = self._encode("pair", self._read_pairs(self.val_path))
        self._check_truncation("pairs")
        logger.info("%s", self.summary())

    def reference_dataloader(
        self, *, layout: MicroBatchLayout, micro_batches_multiple_of: int = 1
    ) -> DataLoader:
        """Every pair once, for the reference pass (SCIR_SPEC §7 step 3), in the micro-batches
        training will run.

        The micro-batches of the first training epoch (the same k pairs together, in
        ``layout``: the training layout, with judge rows where the reference pass reads M_t's
        judge and training does not, ``MicroBatchLayout.for_reference``), then
        the pairs that epoch leaves out (all of them, in file order, when they do not fill a global
        batch: an evaluation file). A micro-batch's shape and padding depend on the pairs
        it holds, so this replay is what makes log πθ = log πref bit for bit at the first step
        (SCIR_SPEC §4). Micro-batch m goes to DP rank ``m % dp_size``. The last micro-batches
        are completed with fillers (``pair_indices`` = -1) so that every micro-batch has k pairs
        and every rank the same number of micro-batches, a multiple of
        ``micro_batches_multiple_of``.

        Args:
            layout: the reference pass's layout (the training rows, and maybe judge rows).
            micro_batches_multiple_of: each rank's micro-batch count is a multiple of this
                (Megatron's interleaved pipeline schedule needs a multiple of the pipeline size).
        """
        items = self._require(self._train, "fit")
        k = self.cfg.train.micro_batch_size
        if len(items) >= self.global_batch_size:
            steps, left_out = self._sampler(items, 1, shuffle=None).epoch_micro_batches(0)
        else:  # too few pairs to train on (an evaluation file): no step to tie, file order
            steps, left_out = (
                [],
                [list(range(i, min(i + k, len(items)))) for i in range(0, len(items), k)],
            )
        filler = -len(items)  # a filler copy of the last pair
        batches = [mb + [filler] * (k - len(mb)) for mb in steps + left_out]
        per_round = self.dp_size * micro_batches_multiple_of
        batches += [[filler] * k] * (-len(batches) % per_round)
        return self._loader(items, batches[self.dp_rank :: self.dp_size], layout=layout)

    def _read_pairs(self, path: Path) -> list[PairRecord]:
        pairs = self._read(path, "pairs")
        with_refs = [p.ref_logps_1 is not None for p in pairs]
        if any(with_refs) and not all(with_refs):
            missing = pairs[with_refs.index(False)]
            raise DataError(
                f"{missing.where}: pair {missing.pair_id!r} has no ref_logps_1/ref_logps_2 while "
                "other pairs of the file have them: rerun the reference pass on the whole file"
            )
        return pairs

    def _sample_length(self, pair: EncodedPair) -> int:
        """Packed: the pair's total tokens; padded: its longest sequence (in ``layout``)."""
        lengths = [len(pair.prompt) + len(response) for response in pair.responses]
        lengths += [len(ids) for ids in pair.judge[: self.layout.judge_rows_per_pair]]
        return sum(lengths) if self.layout.packed else max(lengths)

    def _collate_fn(self, **overrides) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
        kwargs = dict(layout=self.layout) | overrides
        return functools.partial(collate_pairs, pad_id=self.tokenizer.pad_id, **kwargs)
