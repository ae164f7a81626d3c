"""Where a job's model comes from, what it is called, and the one loader.

A :class:`ModelSource` is a megatron-scir / Megatron-LM / NeMo checkpoint, a Hugging Face folder
(converted on load) or a random init. Its :attr:`~ModelSource.identity` is the one string the
run knows the starting weights by: the stage fingerprints of ``scir iterate`` and the reference
pass's input hash both use it. :func:`load_run_config` resolves a job's config from the source
(the model section from the checkpoint's metadata or the folder's ``config.json``, the tokenizer
they carry), and :func:`load_model` builds this rank's chunks of a layout and loads the weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_scir.checkpoint import (
    METADATA_FILE,
    checkpoint_identity,
    checkpoint_tokenizer,
    config_for_checkpoint,
    load_checkpoint,
    read_metadata,
    resolve_checkpoint,
    tokenizer_config_from_checkpoint,
)
from megatron_scir.checkpoint.metadata import check_tokenizer
from megatron_scir.config import Config, ConfigError, load_config, validate
from megatron_scir.config.choices import TokenizerType
from megatron_scir.config.load import override_value
from megatron_scir.convert import config_from_hf, load_hf_into_model
from megatron_scir.hashing import content_fingerprint

logger = logging.getLogger(__name__)

CHECKPOINT, HF, RANDOM_INIT = "checkpoint", "hf", "random-init"
CHAT, TINY = "chat", "tiny"
"""The presets a job without ``--config`` runs with (:func:`default_preset`)."""


@dataclass(frozen=True)
class ModelSource:
    """The weights a job starts from.

    Attributes:
        kind: ``checkpoint``, ``hf`` or ``random-init``.
        path: the checkpoint directory or Hugging Face folder (None for a random init).
        seed: the init seed (``train.seed``) of a random init.
    """

    kind: str
    path: str | None = None
    seed: int | None = None

    @classmethod
    def of(
        cls, cfg: Config, *, ckpt: str | os.PathLike | None = None, hf_dir: str | None = None
    ) -> ModelSource:
        """``hf_dir``, else ``ckpt`` or ``checkpoint.load``, else a random init (``train.seed``)."""
        if hf_dir is not None:
            return cls(HF, str(hf_dir))
        if ckpt or cfg.checkpoint.load:
            return cls(CHECKPOINT, str(ckpt or cfg.checkpoint.load))
        return cls(RANDOM_INIT, seed=cfg.train.seed)

    @classmethod
    def checkpoint(cls, path: str | os.PathLike) -> ModelSource:
        return cls(CHECKPOINT, str(path))

    @property
    def identity(self) -> str:
        """The one identity string, by content: ``random-init:seed=N``;
        ``hf:<resolved folder>|tree-sha256:<digest of its files>``; for a checkpoint its resolved
        path, the content digest (its files checked against the hashes written at save) and
        the metadata file's mtime (:func:`~megatron_scir.checkpoint.checkpoint_identity`).
        Digests are cached (:mod:`megatron_scir.hashing`): an untouched model is read once.

        Raises:
            CheckpointError / ConfigError: a damaged checkpoint, an unreadable folder.
        """
        if self.kind == RANDOM_INIT:
            return f"{RANDOM_INIT}:seed={self.seed}"
        if self.kind == HF:
            folder = Path(self.path).resolve()
            try:
                return f"{HF}:{folder}|{content_fingerprint(folder)}"
            except OSError as error:
                raise ConfigError(
                    f"--hf-dir {folder}: {error.filename} cannot be read ({error.strerror})"
                ) from error
        return f"{CHECKPOINT}:{checkpoint_identity(self.path)}"


def identity_folder(identity: str) -> str | None:
    """The Hugging Face folder a :attr:`ModelSource.identity` names (None for another kind)."""
    kind, _, rest = identity.partition(":")
    return rest.split("|", 1)[0] if kind == HF else None


def default_preset(
    *, ckpt: str | os.PathLike | None = None, hf_dir: str | os.PathLike | None = None
) -> str:
    """The preset of a job run without ``--config``: ``chat`` for a pretrained model (an HF
    folder, or a checkpoint that carries a Hugging Face tokenizer, e.g. one ``scir convert``
    wrote), ``tiny`` otherwise (the laptop demo's toy model and its 256-piece tokenizer)."""
    if hf_dir is not None:
        return CHAT
    carried = checkpoint_tokenizer(ckpt) if ckpt else None
    if carried is not None and carried[0] == TokenizerType.HF:
        return CHAT
    return TINY


def load_run_config(
    config: str | None,
    overrides: Sequence[str],
    *,
    ckpt: str | None = None,
    hf_dir: str | None = None,
    uses: Collection[str] = (),
) -> Config:
    """A job's validated config: ``config`` + ``overrides`` with the model section of the model
    it starts from (``hf_dir``'s ``config.json``, or the metadata of ``ckpt`` /
    ``checkpoint.load``), and that model's tokenizer unless ``data.tokenizer_path`` is set; then
    ``validate(cfg, uses=uses)``. The shape never has to be repeated on the command line.

    ``config=None`` picks :func:`default_preset`; under ``chat`` the budgets not set in
    ``overrides`` shrink to fit the model's positions. A trained checkpoint's chat and judge
    format replace the config's unless ``overrides`` set them (logged either way), and a
    tokenizer that is not the one the checkpoint was saved with is refused
    (:mod:`megatron_scir.checkpoint.metadata`).
    """
    named = ckpt or override_value(overrides, "checkpoint.load")
    if named and Path(named).exists():  # complete and readable before anything reads it
        resolve_checkpoint(named)
    if config is None:
        config = default_preset(ckpt=named, hf_dir=hf_dir)
    fit = config == CHAT
    if hf_dir is not None:
        cfg = config_from_hf(hf_dir, config, overrides, fit_budgets_to_model=fit)
        if cfg.data.tokenizer_path is None:
            data = dataclasses.replace(cfg.data, tokenizer_type="hf", tokenizer_path=str(hf_dir))
            cfg = dataclasses.replace(cfg, data=data)
    else:
        # the layout is checked below, against the model the run starts from
        cfg = load_config(config, overrides, check_layout=False)
        ckpt = ckpt or cfg.checkpoint.load
        if ckpt:
            # a folder that is there must be a complete, readable checkpoint before its config
            # is read (a missing one is reported when the model loads, after the inputs)
            path = resolve_checkpoint(ckpt) if Path(ckpt).exists() else None
            cfg = config_for_checkpoint(ckpt, config, overrides, fit_budgets_to_model=fit)
            cfg = tokenizer_config_from_checkpoint(cfg, ckpt)
            if path is not None and (path / METADATA_FILE).is_file():
                check_tokenizer(read_metadata(path).tokenizer, cfg.data, path)
    validate(cfg, uses=uses)
    return cfg


def load_model(
    cfg: Config, source: ModelSource, *, log: bool = False
) -> list[torch.nn.Module]:
    """This rank's model chunks for ``cfg.parallel`` with the weights of ``source``.

    Collective; the parallel world of ``cfg.parallel`` must be entered. A random init draws the
    weights with ``train.seed``; a checkpoint or HF folder loads every weight (nothing is
    initialised first).
    """
    from megatron_scir.models import build_model_chunks  # lazy: builds on Megatron-Core

    if source.kind == RANDOM_INIT:
        return build_model_chunks(cfg)
    chunks = build_model_chunks(cfg, init_weights=False)
    if source.kind == HF:
        load_hf_into_model(chunks, source.path, cfg)
    elif source.kind == CHECKPOINT:
        loaded = load_checkpoint(source.path, chunks, cfg)
        if log:
            logger.info(
                "loaded %s (iteration %d, step %d)", loaded.path, loaded.iteration, loaded.step
            )
    else:
        raise ConfigError(f"unknown model source {source.kind!r}")
    return chunks
