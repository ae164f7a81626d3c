"""``scir_checkpoint.json``, the ``hf/`` assets, and the run config a checkpoint implies.

The metadata file is written last (by rank 0) into a checkpoint directory: its format version,
the writer's config, iteration and step. It fixes the model a checkpoint holds, so ``--ckpt``
alone gives the model section (:func:`config_for_checkpoint`) and, through the tokenizer files
under ``hf/``, the tokenizer (:func:`tokenizer_config_from_checkpoint`). Megatron-LM and NeMo 2
checkpoints have neither: the caller's config describes them. Neither torch nor Megatron-Core is
imported here.

A checkpoint also carries its **reading instructions**: the content fingerprint of the tokenizer
it was saved with (``tokenizer``; a different tokenizer is refused with both fingerprints,
:func:`check_tokenizer`) and, once it has been trained (step > 0), the chat and judge format it
was trained with (``trained_with``: the :data:`READING_KEYS`). A command that loads it uses
those rather than its preset's or config file's, unless a command-line override sets them, and
logs each key either way (:func:`config_for_checkpoint`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from megatron_scir.checkpoint.errors import CheckpointError
from megatron_scir.config import Config, ModelConfig, config_from_dict, load_config, validate
from megatron_scir.config.choices import TokenizerType
from megatron_scir.config.derived import fit_budgets
from megatron_scir.config.load import override_keys
from megatron_scir.config.outputs import flat_config, matches
from megatron_scir.config.schema import DataConfig
from megatron_scir.hashing import content_fingerprint, short

logger = logging.getLogger(__name__)

FORMAT = "megatron-scir/torch_dist"
FORMAT_VERSION = 1
METADATA_FILE = "scir_checkpoint.json"
ASSETS_DIR = "hf"
# ModelConfig fields a checkpoint fixes: tensor shapes, and what the weights were trained with.
MODEL_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "head_dim",
    "add_qkv_bias",
    "qk_layernorm",
    "vocab_size",
    "rotary_base",
    "rope_scaling",
    "layernorm_epsilon",
    "share_embeddings_and_output_weights",
)


READING_KEYS = ("judge.", "data.chat_template")
"""How a trained checkpoint's texts are read: its judge format and chat template (``section.``
names a whole section)."""

TOKENIZER_FILES = (
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "merges.txt",
    "tekken.json",
)
"""The files of a Hugging Face tokenizer folder besides ``tokenizer*`` (its fingerprint)."""


def tokenizer_fingerprint(data: DataConfig) -> str | None:
    """The content fingerprint of ``data``'s tokenizer: the SentencePiece file's SHA-256, or a
    digest of a Hugging Face folder's tokenizer files (``tokenizer*`` and
    :data:`TOKENIZER_FILES`; the model's weights and config are not part of it). None without a
    tokenizer path or when nothing is there (building the tokenizer reports that)."""
    if data.tokenizer_path is None:
        return None
    path = Path(data.tokenizer_path)
    try:
        if path.is_dir():
            names = [
                p.name
                for p in path.iterdir()
                if p.is_file() and (p.name.startswith("tokenizer") or p.name in TOKENIZER_FILES)
            ]
            return content_fingerprint(path, names=names)
        return content_fingerprint(path) if path.is_file() else None
    except OSError as error:
        raise CheckpointError(
            f"tokenizer {path}: cannot be read ({error.strerror})"
        ) from error


@dataclass(frozen=True)
class CheckpointMetadata:
    """The content of ``scir_checkpoint.json``."""

    format_version: int
    iteration: int
    step: int
    config: Config
    padded_vocab_size: int
    layout: dict[str, int | None]
    """TP, PP, VPP and world size of the writer (informational: any layout can read)."""
    contents: tuple[str, ...]
    """Top-level entries of the dist checkpoint (``model``/``model0``…, ``extra_state``)."""
    assets: tuple[str, ...]
    """Files under ``hf/``."""
    files: dict[str, dict] = field(default_factory=dict)
    """``{relative path: {"size", "sha256"}}`` of every other file, hashed at save
    (:mod:`~megatron_scir.checkpoint.verify`); empty for checkpoints written before."""
    tokenizer: str | None = None
    """The content fingerprint of the tokenizer it was saved with
    (:func:`tokenizer_fingerprint`); None when the config named none."""
    trained_with: dict | None = None
    """``{"section.key": value}`` of the :data:`READING_KEYS` it was trained with (None before
    its first optimizer step: a converted or freshly initialised model has no format yet)."""


def write_metadata(directory: Path, metadata: CheckpointMetadata) -> None:
    """Write ``scir_checkpoint.json`` into ``directory`` and flush it to disk (rank 0 only)."""
    record = dataclasses.asdict(metadata)
    record["config"] = dataclasses.asdict(metadata.config)
    record = {"format": FORMAT, **record}
    with open(directory / METADATA_FILE, "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


_READ: dict[tuple, CheckpointMetadata] = {}
"""Parsed metadata by (file, inode, size, mtime): a command reads one checkpoint's metadata
several times (config, identity, load), and rebuilding its Config costs ~80 ms each time."""


def read_metadata(ckpt_dir: str | Path) -> CheckpointMetadata:
    """The metadata of a complete megatron-scir checkpoint (parsed once while the file is
    unchanged)."""
    path = Path(ckpt_dir) / METADATA_FILE
    try:
        stat = path.stat()
    except OSError:
        stat = None
    if stat is None or not path.is_file():
        raise CheckpointError(
            f"{ckpt_dir} is not a complete megatron-scir checkpoint: no {path.name}"
        )
    key = (str(path.absolute()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _READ:
        if len(_READ) >= 64:
            _READ.clear()
        _READ[key] = _parse_metadata(path)
    return _READ[key]


def _parse_metadata(path: Path) -> CheckpointMetadata:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CheckpointError(f"{path}: cannot be read ({error.strerror})") from error
    except ValueError as error:
        raise CheckpointError(
            f"{path}: not valid JSON ({error}): the checkpoint's metadata is damaged"
        ) from error
    if not isinstance(record, dict) or (
        record.get("format") != FORMAT or record.get("format_version") != FORMAT_VERSION
    ):
        found = record if not isinstance(record, dict) else record.get("format")
        version = record.get("format_version") if isinstance(record, dict) else None
        raise CheckpointError(
            f"{path}: format {found!r} version {version!r}; "
            f"this megatron-scir reads {FORMAT!r} version {FORMAT_VERSION}"
        )
    record.pop("format")
    try:
        record["config"] = config_from_dict(record["config"])
        for key in ("contents", "assets"):
            record[key] = tuple(record[key])
        return CheckpointMetadata(**record)
    except (KeyError, TypeError) as error:
        raise CheckpointError(
            f"{path}: missing or unknown field ({error}): the checkpoint's metadata is damaged"
        ) from error


def check_same_model(saved: ModelConfig, current: ModelConfig, where: str | Path) -> None:
    """Refuse a config whose model differs from the checkpoint's in a field the weights fix."""
    for name in MODEL_FIELDS:
        want, found = getattr(current, name), getattr(saved, name)
        if want != found:
            raise CheckpointError(
                f"checkpoint {where} holds another model: model.{name} is {found!r} there, "
                f"{want!r} in the config; use the checkpoint's model config "
                f"({METADATA_FILE})"
            )


def config_for_checkpoint(
    ckpt_dir: str | Path,
    base: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    fit_budgets_to_model: bool = False,
) -> Config:
    """``load_config(base, overrides)`` with the model section of the model the checkpoint holds.

    The checkpoint's ``scir_checkpoint.json`` gives the model section, so ``--ckpt`` alone is
    enough; ``model.*`` keys among ``overrides`` still apply on top (e.g. ``transformer_impl``,
    ``params_dtype``; a changed shape is refused when the weights load). A Megatron-LM or NeMo 2
    checkpoint carries no megatron-scir metadata: the config's model section is used as is.
    ``fit_budgets_to_model``: the budgets not among ``overrides`` shrink to the model's positions
    (:func:`~megatron_scir.config.derived.fit_budgets`; the ``chat`` preset's defaults).
    """
    cfg = load_config(base, overrides, check_layout=False)  # checked with the model below
    path = Path(ckpt_dir)
    if (path / METADATA_FILE).is_file():
        metadata = read_metadata(path)
        saved = metadata.config.model
        explicit = {
            key.removeprefix("model.")
            for key in override_keys(overrides)
            if key.startswith("model.")
        }
        model = dataclasses.replace(saved, **{name: getattr(cfg.model, name) for name in explicit})
        cfg = dataclasses.replace(cfg, model=model)
        cfg = _read_as_trained(cfg, metadata, override_keys(overrides), path)
    if fit_budgets_to_model:
        cfg = fit_budgets(cfg, keep=override_keys(overrides))
    validate(cfg)
    return cfg


def trained_with(cfg: Config, step: int) -> dict | None:
    """The :data:`READING_KEYS` of ``cfg`` a checkpoint at optimizer step ``step`` records."""
    if step <= 0:
        return None
    return {k: v for k, v in flat_config(cfg).items() if matches(k, READING_KEYS)}


def _read_as_trained(
    cfg: Config, metadata: CheckpointMetadata, explicit: set[str], where: Path
) -> Config:
    """``cfg`` with the checkpoint's chat and judge format wherever no command-line override
    sets the key; every key that differs is logged with what is used."""
    if not metadata.trained_with:
        return cfg
    # the typed values of the stored config (trained_with holds the same, as JSON)
    stored = {k: v for k, v in flat_config(metadata.config).items() if matches(k, READING_KEYS)}
    now = flat_config(cfg)
    sections: dict[str, dict] = {}
    for key, value in sorted(stored.items()):
        if key not in now or now[key] == value:
            continue
        if key in explicit:
            logger.warning(
                "%s: %s is set on the command line (%s), not the checkpoint's %s (%s was "
                "trained with that)", key, key, _show(now[key]), _show(value), where,
            )
            continue
        logger.warning(
            "%s: using the checkpoint's %s (%s was trained with it), not the config's %s; "
            "set %s=... on the command line to override", key, _show(value), where,
            _show(now[key]), key,
        )
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    for section, values in sections.items():
        cfg = dataclasses.replace(
            cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)}
        )
    return cfg


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:45] + "..." + text[-10:]


def check_tokenizer(
    recorded: str | None, data: DataConfig, where: str | Path
) -> None:
    """Refuse a tokenizer whose content differs from the one a checkpoint was saved with.

    Raises:
        CheckpointError: both fingerprints, and what to do.
    """
    if recorded is None:
        return
    current = tokenizer_fingerprint(data)
    if current is None or current == recorded:
        return
    raise CheckpointError(
        f"tokenizer {data.tokenizer_path} ({short(current)}) is not the one checkpoint {where} "
        f"was saved with ({short(recorded)}): leave data.tokenizer_path unset to use the one "
        "it carries, or pass the tokenizer it was trained with"
    )


def checkpoint_assets(ckpt_dir: str | Path) -> list[Path]:
    """The files under ``<ckpt>/hf/`` (pass them as ``assets=`` to carry them to the next save)."""
    assets = Path(ckpt_dir) / ASSETS_DIR
    return sorted(p for p in assets.iterdir() if p.is_file()) if assets.is_dir() else []


def checkpoint_tokenizer(ckpt_dir: str | Path) -> tuple[TokenizerType, Path] | None:
    """The tokenizer the checkpoint carries under ``<ckpt>/hf/`` (copied there from the HF folder
    it was converted from), as ``(type, path)``: a Hugging Face tokenizer (``tokenizer.json`` /
    ``tokenizer_config.json``; the folder) or a SentencePiece ``tokenizer.model`` (the file);
    None without either."""
    names = {p.name: p for p in checkpoint_assets(ckpt_dir)}
    if "tokenizer.json" in names or "tokenizer_config.json" in names:
        return TokenizerType.HF, Path(ckpt_dir) / ASSETS_DIR
    if "tokenizer.model" in names:
        return TokenizerType.SENTENCEPIECE, names["tokenizer.model"]
    return None


def tokenizer_config_from_checkpoint(cfg: Config, ckpt_dir: str | Path) -> Config:
    """``cfg`` using the tokenizer the checkpoint carries (:func:`checkpoint_tokenizer`), unless
    ``data.tokenizer_path`` is set. Without one, ``cfg`` is returned unchanged."""
    carried = None if cfg.data.tokenizer_path is not None else checkpoint_tokenizer(ckpt_dir)
    if carried is None:
        return cfg
    kind, path = carried
    data = dataclasses.replace(cfg.data, tokenizer_type=kind.value, tokenizer_path=str(path))
    return dataclasses.replace(cfg, data=data)
