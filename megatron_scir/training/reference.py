"""The reference pass: log πref and the M_t judge over every pair, once (SCIR_SPEC §7.3).

One forward-only pass of M_t over an iteration's pairs, on every TP/PP/DP rank (Megatron's
schedule with ``forward_only=True, collect_non_loss_data=True``), stores with each pair
``ref_logps_1/2`` (SCIR_SPEC §1), the judge's log-odds ``ref_judge_logits_12/21`` (§2; when its
layout has judge rows, which the loss mode's spec decides: ``reference_judge``; ``_21`` only with
two judge orders) and, where the mode's labels come from M_t's judge (``srlm``), SRLM's ``label``
(§6; none for a dropped pair), and summarises the judge at the start of the iteration
(:class:`ReferenceSummary`): no second pass is needed.

Exact ties at step 0 (SCIR_SPEC §4): the pass replays the *training* micro-batches of the first
epoch (the same pairs together, hence the same rows, padding or packing) through the training
forward step's own last-stage computation
(:func:`~megatron_scir.training.forward_step.make_reference_forward_step`), so that at the first
step log πθ = log πref bit for bit. The caller hands in both layouts: the training layout (which
pairs share a micro-batch) and the pass's own (the training rows, plus judge rows where the pass
reads a judge that training does not: ``srlm``, whose ties do not matter, its labels do not come
from P_I).

Global rank 0 writes the file atomically, then ``<file>.inputs.json`` with the SHA-256 of the
inputs (:func:`reference_inputs`) and of the file; a pass whose sidecar matches both is skipped,
and the same inputs reproduce the file byte for byte. See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from megatron_scir.config import Config
from megatron_scir.config.derived import micro_batches_per_step
from megatron_scir.config.outputs import reference_config_inputs
from megatron_scir.data.datamodule import ScirDataModule
from megatron_scir.data.errors import DataError
from megatron_scir.data.jsonl import write_records
from megatron_scir.data.judges import JudgeFormat, judge_format
from megatron_scir.data.layout import MicroBatchLayout
from megatron_scir.data.records import PairRecord
from megatron_scir.data.stream import atomic_open
from megatron_scir.data.tokenizer import Tokenizer
from megatron_scir.rewards import judge_preference, verdict_mass
from megatron_scir.rewards import srlm_labels as fix_srlm_labels
from megatron_scir.training.forward_step import make_reference_forward_step
from megatron_scir.training.schedule import run_schedule

if TYPE_CHECKING:
    from megatron_scir.parallel.runtime import Runtime

__all__ = [
    "ReferenceSummary",
    "reference_inputs",
    "run_reference_pass",
    "sidecar_path",
]

logger = logging.getLogger(__name__)

FORMAT = "megatron-scir/reference-pass"
FORMAT_VERSION = 2  # 2: the config keys flat, as declared in config/outputs.py; the layouts
_QUANTILES = {"p10": 0.1, "p50": 0.5, "p90": 0.9}


@dataclass(frozen=True)
class ReferenceSummary:
    """What the reference pass found, identical on every rank.

    Attributes:
        num_pairs: pairs in the file.
        judge_read: whether the pass read the judge (not in ``dpo`` mode).
        position_consistency: fraction of pairs whose two judge orders prefer the same response
            (None with one order). The SCIR consistency rate itself is 0 at step 0 by
            construction (P_I = ½, SCIR_SPEC §4); this is how consistent M_t's judge starts.
        p_judge: P_G (with ``judge.position_debias``) over the pairs: ``mean``, ``std``, ``min``,
            ``p10``, ``p50``, ``p90``, ``max``, ``first_preferred`` (fraction with P_G > ½),
            ``ties`` (fraction within ``scir.tie_eps`` of ½); None without the judge.
        verdict_mass: mean probability the judge puts on a valid verdict/score token.
        num_srlm_labelled, num_srlm_dropped: ``srlm`` mode's labelled and dropped pairs.
        skipped: the file was present and valid for these inputs; nothing was run.
    """

    num_pairs: int
    judge_read: bool
    position_consistency: float | None = None
    p_judge: dict[str, float] | None = None
    verdict_mass: float | None = None
    num_srlm_labelled: int | None = None
    num_srlm_dropped: int | None = None
    skipped: bool = False

    def metrics(self) -> dict[str, float]:
        """Slash-namespaced scalars for the metrics log (``reference/...``)."""
        out = {"reference/num_pairs": float(self.num_pairs)}
        for key, value in (
            ("judge_position_consistency", self.position_consistency),
            ("verdict_mass", self.verdict_mass),
            ("srlm_labelled", self.num_srlm_labelled),
            ("srlm_dropped", self.num_srlm_dropped),
        ):
            if value is not None:
                out[f"reference/{key}"] = float(value)
        for key, value in (self.p_judge or {}).items():
            out[f"reference/p_judge_{key}"] = value
        return out


def sidecar_path(out_path: str | os.PathLike) -> Path:
    """``<out_path>.inputs.json``: the hashes and summary recorded with a reference file."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".inputs.json")


def reference_inputs(
    cfg: Config,
    tokenizer: Tokenizer,
    pairs_path: str | os.PathLike,
    *,
    inputs_id: str,
    layout: MicroBatchLayout,
    reference_layout: MicroBatchLayout,
    srlm_labels: bool,
) -> dict[str, Any]:
    """Everything the reference file depends on, as JSON (its SHA-256 keys the file).

    The pairs file's bytes, the model (``inputs_id``), the tokenizer, the config keys the
    reference stage reads (declared once in :mod:`megatron_scir.config.outputs`: the model and
    judge sections, the data budgets, chat template and bad-record policy, what decides the first
    epoch's micro-batches, and the TP/PP/SP layout, since micro-batches and layout decide the exact
    bits, SCIR_SPEC §4), and what the pass reads and writes: both layouts and the SRLM labels.
    """
    return {
        "format_version": FORMAT_VERSION,
        "pairs_sha256": _file_sha256(pairs_path),
        "model_id": inputs_id,
        "tokenizer": {"name": tokenizer.name, "vocab_size": tokenizer.vocab_size},
        "config": reference_config_inputs(cfg),
        "layout": dataclasses.asdict(layout),
        "reference_layout": dataclasses.asdict(reference_layout),
        "srlm_labels": srlm_labels,
    }


def run_reference_pass(
    runtime: Runtime,
    model_chunks: Sequence[torch.nn.Module],
    cfg: Config,
    tokenizer: Tokenizer,
    pairs_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    inputs_id: str,
    layout: MicroBatchLayout,
    reference_layout: MicroBatchLayout,
    srlm_labels: bool = False,
) -> ReferenceSummary:
    """Write ``out_path``: the pairs with log πref and M_t's judge (see the module docstring).

    Collective: call on every rank of the world, inside the caller's ``parallel_world``, with
    this rank's model chunks (M_t; plain or DDP-wrapped). Skipped, returning the recorded
    summary, when ``out_path`` and its sidecar are present and valid for these inputs.

    Args:
        runtime: the :class:`~megatron_scir.parallel.runtime.Runtime`.
        model_chunks: this rank's chunks (several under interleaved PP).
        cfg: the run's config (the keys of :func:`reference_inputs`; ``data.num_workers``).
        tokenizer: the run's tokenizer.
        pairs_path: the iteration's pairs JSONL.
        out_path: where the pairs with reference fields go (not ``pairs_path``).
        inputs_id: the model's identity (``ModelSource.identity`` of what M_t was loaded from).
        layout: the training layout: which pairs share a micro-batch (length grouping).
        reference_layout: this pass's layout: the training rows, judge rows where it reads
            M_t's judge (``MicroBatchLayout.for_reference``).
        srlm_labels: fix SRLM's labels from M_t's judge (needs judge rows).

    Returns:
        The :class:`ReferenceSummary`, identical on every rank.
    """
    if not Path(pairs_path).is_file():
        raise DataError(f"pairs file {pairs_path} does not exist: build the pairs first")
    if Path(out_path).resolve() == Path(pairs_path).resolve():
        raise DataError(
            f"the reference pass writes a new file: choose an out_path other than {pairs_path}"
        )

    if srlm_labels and not reference_layout.with_judge:
        raise ValueError("SRLM labels come from M_t's judge: the reference layout needs judge rows")

    def check_existing() -> tuple[dict[str, Any], ReferenceSummary | None]:
        inputs = reference_inputs(
            cfg, tokenizer, pairs_path, inputs_id=inputs_id, layout=layout,
            reference_layout=reference_layout, srlm_labels=srlm_labels,
        )
        return inputs, _recorded_summary(out_path, inputs)

    inputs, recorded = runtime.on_rank_zero(check_existing)
    if recorded is not None:
        return recorded

    dm = ScirDataModule(
        cfg, tokenizer, layout=layout, dp_rank=runtime.dp_rank, dp_size=runtime.dp_size,
        train_path=pairs_path,
    )
    dm.setup("fit")
    if not dm.pairs:
        raise DataError(f"{pairs_path}: no pairs to run the reference pass on")
    local = _forward(runtime, model_chunks, cfg, dm, reference_layout)
    gathered = [None] * runtime.world_size if runtime.is_rank_zero else None
    dist.gather_object(local, gathered, dst=0)

    def write() -> ReferenceSummary:
        columns = _assemble(gathered, len(dm.pairs))
        records, summary = _records_and_summary(
            cfg, dm.pairs, columns, reference_layout, srlm_labels=srlm_labels
        )
        _write(out_path, records, inputs, summary)
        logger.info("reference pass: wrote %s; %s", out_path, summary)
        return summary

    return runtime.on_rank_zero(write)


@torch.no_grad()
def _forward(
    runtime: Runtime,
    chunks: Sequence[torch.nn.Module],
    cfg: Config,
    dm: ScirDataModule,
    layout: MicroBatchLayout,
) -> dict[str, torch.Tensor] | None:
    """Run every pair through M_t in ``layout``; per-pair columns on the last stage's TP rank 0,
    else None."""
    candidate_ids = dm.verdict_token_ids if layout.with_judge else None
    interleaved = len(chunks) > 1
    loader = dm.reference_dataloader(
        layout=layout, micro_batches_multiple_of=runtime.pp_size if interleaved else 1
    )
    forward_step = make_reference_forward_step(
        cfg, layout, candidate_ids, tp_group=runtime.tp_group
    )
    # One schedule call per training step's micro-batches (the loader replays them): under
    # interleaved PP a call's micro-batches share one length, the same as in training.
    per_step = micro_batches_per_step(cfg.train, runtime.dp_size)
    outputs = []
    for block in itertools.batched(loader, per_step):
        outputs += run_schedule(
            forward_step, chunks, block, forward_only=True, collect_non_loss_data=True
        )
    # Every TP rank of the last stage holds the same values; one of them reports.
    if not runtime.is_last_stage() or runtime.tp_rank != 0:
        return None
    judge = judge_format(cfg.judge)
    per_micro = [_pair_columns(data, layout, judge) for data in outputs]
    return {name: torch.cat([part[name] for part in per_micro]) for name in per_micro[0]}


def _pair_columns(
    data: dict[str, torch.Tensor], layout: MicroBatchLayout, judge: JudgeFormat
) -> dict[str, torch.Tensor]:
    """One micro-batch's per-pair results on CPU, fillers (``pair_indices`` −1) left out."""
    policy = data["policy_logps"].float()
    columns = {
        "pair_indices": data["pair_indices"],
        "ref_logps_1": policy[layout.policy_side_rows(0)],
        "ref_logps_2": policy[layout.policy_side_rows(1)],
    }
    candidate_logps = data.get("candidate_logps")
    if candidate_logps is not None:
        k = layout.num_pairs
        judge_12, judge_21 = judge.log_odds(candidate_logps, k)
        columns["judge_12"] = judge_12
        if judge_21 is not None:
            columns["judge_21"] = judge_21
        # judge rows are order-major: row o·k + i belongs to pair i
        columns["verdict_mass"] = verdict_mass(candidate_logps).view(-1, k).mean(dim=0)
    keep = data["pair_indices"].cpu() >= 0
    return {name: value.cpu()[keep] for name, value in columns.items()}


def _assemble(gathered: list[Any], num_pairs: int) -> dict[str, torch.Tensor]:
    """The reporting ranks' columns in pair order; every pair must come back exactly once."""
    parts = [part for part in gathered if part is not None]
    columns = {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
    order = torch.argsort(columns["pair_indices"])
    columns = {name: value[order] for name, value in columns.items()}
    if not torch.equal(columns["pair_indices"], torch.arange(num_pairs)):
        raise RuntimeError(
            f"the reference pass got {len(order)} results for {num_pairs} pairs from "
            f"{len(parts)} reporting ranks: each pair must come back exactly once (one last-stage "
            "TP rank 0 per data-parallel replica)"
        )
    return columns


def _records_and_summary(
    cfg: Config,
    pairs: list[PairRecord],
    columns: dict[str, torch.Tensor],
    layout: MicroBatchLayout,
    *,
    srlm_labels: bool,
) -> tuple[list[PairRecord], ReferenceSummary]:
    """The output records and the summary, from the per-pair columns in pair order."""
    judge_read = layout.with_judge
    judge_12, judge_21 = columns.get("judge_12"), columns.get("judge_21")
    labels = None
    if srlm_labels:
        labels = fix_srlm_labels(
            judge_12,
            judge_21,
            position_debias=cfg.judge.position_debias,
            drop_margin=cfg.scir.srlm_drop_margin,
        ).tolist()
    ref_1, ref_2 = columns["ref_logps_1"].tolist(), columns["ref_logps_2"].tolist()
    records = []
    for i, pair in enumerate(pairs):
        fields = dict(
            ref_logps_1=ref_1[i],
            ref_logps_2=ref_2[i],
            ref_judge_logits_12=None if judge_12 is None else judge_12[i].item(),
            ref_judge_logits_21=None if judge_21 is None else judge_21[i].item(),
        )
        if labels is not None:
            fields["label"] = {1.0: 1, 0.0: 2}.get(labels[i])  # −1: dropped, no label
        records.append(dataclasses.replace(pair, **fields))
    summary = ReferenceSummary(num_pairs=len(pairs), judge_read=judge_read)
    if judge_read:
        summary = dataclasses.replace(
            summary, **_judge_summary(cfg, judge_12, judge_21, columns["verdict_mass"])
        )
    if labels is not None:
        dropped = labels.count(-1.0)
        summary = dataclasses.replace(
            summary, num_srlm_labelled=len(labels) - dropped, num_srlm_dropped=dropped
        )
    return records, summary


def _judge_summary(
    cfg: Config, judge_12: torch.Tensor, judge_21: torch.Tensor | None, mass: torch.Tensor
) -> dict[str, Any]:
    """P_G's distribution, the judge's agreement across orders and its verdict mass."""
    log_p, _ = judge_preference(judge_12, judge_21, position_debias=cfg.judge.position_debias)
    p_judge = log_p.double().exp()
    centered = p_judge - 0.5
    stats = {
        "mean": p_judge.mean(),
        "std": p_judge.std(correction=0),
        "min": p_judge.min(),
        **{name: torch.quantile(p_judge, q) for name, q in _QUANTILES.items()},
        "max": p_judge.max(),
        "first_preferred": (centered > 0).double().mean(),
        "ties": (centered.abs() <= cfg.scir.tie_eps).double().mean(),
    }
    consistency = None
    if judge_21 is not None:
        # ℓ21 is evidence for y2: the orders agree when ℓ12 and −ℓ21 have the same sign
        agree = torch.sign(judge_12) * torch.sign(-judge_21) > 0
        consistency = agree.double().mean().item()
    return {
        "p_judge": {name: value.item() for name, value in stats.items()},
        "position_consistency": consistency,
        "verdict_mass": mass.double().mean().item(),
    }


def _write(
    out_path: str | os.PathLike,
    records: list[PairRecord],
    inputs: dict[str, Any],
    summary: ReferenceSummary,
) -> None:
    """The data file, then its sidecar (both atomic): a crash in between leaves no valid pair."""
    write_records(out_path, records)
    sidecar = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "inputs_sha256": _json_sha256(inputs),
        "output_sha256": _file_sha256(out_path),
        "inputs": inputs,
        "summary": dataclasses.asdict(summary),
    }
    with atomic_open(sidecar_path(out_path)) as fh:
        fh.write(_json_bytes(sidecar, indent=2))


def _recorded_summary(
    out_path: str | os.PathLike, inputs: dict[str, Any]
) -> ReferenceSummary | None:
    """The recorded summary when ``out_path`` is valid for ``inputs``; else None (and why)."""
    out_path, sidecar = Path(out_path), sidecar_path(out_path)
    if not out_path.is_file() or not sidecar.is_file():
        return None
    try:
        recorded = json.loads(sidecar.read_bytes())
        if (recorded["format"], recorded["format_version"]) != (FORMAT, FORMAT_VERSION):
            raise ValueError(f"format {recorded['format']} {recorded['format_version']}")
        summary = ReferenceSummary(**recorded["summary"])
        same_inputs = recorded["inputs_sha256"] == _json_sha256(inputs)
        same_output = recorded["output_sha256"] == _file_sha256(out_path)
    except (ValueError, KeyError, TypeError) as error:
        logger.info("reference pass: %s unreadable (%s); recomputing", sidecar, error)
        return None
    if not same_inputs:
        was = recorded.get("inputs", {})
        changed = [key for key in inputs if was.get(key) != _jsonable(inputs[key])]
        logger.info("reference pass: inputs changed (%s); recomputing", ", ".join(changed))
        return None
    if not same_output:
        logger.info("reference pass: %s was modified after it was written; recomputing", out_path)
        return None
    logger.info("reference pass: %s is up to date for these inputs; skipped", out_path)
    return dataclasses.replace(summary, skipped=True)


def _file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_bytes(obj: Any, *, indent: int | None = None) -> bytes:
    text = json.dumps(obj, sort_keys=True, indent=indent, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _jsonable(obj: Any) -> Any:
    return json.loads(_json_bytes(obj))


def _json_sha256(obj: Any) -> str:
    return hashlib.sha256(_json_bytes(obj)).hexdigest()
