"""Load a preset or YAML file, apply NeMo/Hydra-style overrides, return a validated Config.

    cfg = load_config("tiny", ["model.num_layers=4", "++scir.beta=0.05"])

``a.b=c`` and ``++a.b=c`` both set a key of the schema (``++`` is NeMo's habit of forcing a key
whether or not the preset's YAML mentions it); ``+a.b=c`` is accepted the same way. Keys outside the
schema are never accepted: the error names the key, its section and the closest valid names.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from megatron_scir.config.errors import ConfigError
from megatron_scir.config.schema import Config
from megatron_scir.config.validate import validate

PRESET_DIR = "presets"


def list_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    files = resources.files("megatron_scir.config").joinpath(PRESET_DIR).iterdir()
    return sorted(p.name[: -len(".yaml")] for p in files if p.name.endswith(".yaml"))


def load_config(
    source: str | Path | None = "tiny",
    overrides: Iterable[str] = (),
    *,
    check_layout: bool = True,
) -> Config:
    """Resolve ``source`` (preset name or YAML path) plus ``overrides`` into a validated Config.

    Args:
        source: preset name or YAML path (None: the schema defaults).
        overrides: ``a.b=c`` / ``++a.b=c`` overrides.
        check_layout: check the model against the parallel layout (``validate``). A caller that
            replaces the model section next (from a checkpoint or an HF folder) checks the
            result instead: the preset's model shape must not refuse a layout the real model fits.

    Raises:
        ConfigError: unknown key (with close matches), wrong value type, or a failed check.
    """
    tree: dict[str, Any] = {}
    if source is not None:
        tree = _read_source(str(source))
    for item in overrides:
        key, value = _parse_override(item)
        _check_key(key, origin=f"override {item!r}")
        _assign(tree, key, value)
    return _build(tree, check_layout=check_layout)


def override_keys(overrides: Iterable[str]) -> set[str]:
    """The dotted keys ``overrides`` set (``++a.b=c`` and ``a.b=c`` both give ``a.b``)."""
    return {item.split("=", 1)[0].lstrip("+").strip() for item in overrides}


def override_value(overrides: Iterable[str], key: str) -> Any:
    """The value the last of ``overrides`` that sets ``key`` gives it, parsed as
    :func:`load_config` parses it; None when none sets it."""
    value = None
    for item in overrides:
        name, parsed = _parse_override(item)
        if name == key:
            value = parsed
    return value


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what ``scir config`` prints and checkpoints store)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from its plain-dict form (as stored in checkpoint metadata).

    Configs stored by earlier versions are read too: ``scir.position_debias`` moved to
    ``judge.position_debias``, and ``generation.max_prompt_length`` gave way to the one prompt
    budget ``data.max_prompt_length``.
    """
    return _build(_upgrade_stored(tree))


def _upgrade_stored(tree: dict[str, Any]) -> dict[str, Any]:
    tree = {section: dict(values) for section, values in tree.items()}
    scir, judge = tree.get("scir", {}), tree.setdefault("judge", {})
    if "position_debias" in scir:
        judge.setdefault("position_debias", scir.pop("position_debias"))
    tree.get("generation", {}).pop("max_prompt_length", None)
    return tree


def _read_source(source: str) -> dict[str, Any]:
    path = Path(source)
    if source.endswith((".yaml", ".yml")) or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {source} does not exist")
        text, origin = path.read_text(), str(path)
    else:
        names = list_presets()
        if source not in names:
            close = difflib.get_close_matches(source, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown config preset {source!r}{hint} (presets: {', '.join(names)}; "
                "or pass a .yaml path)"
            )
        res = resources.files("megatron_scir.config").joinpath(PRESET_DIR, f"{source}.yaml")
        text, origin = res.read_text(), f"preset {source} ({source}.yaml)"
    try:
        tree = yaml.load(text, Loader=_Yaml12Loader) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise ConfigError(f"{where}: invalid YAML: {getattr(err, 'problem', err)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{origin}: the top level must be a mapping of sections")
    for key in _flatten(tree):
        _check_key(key, origin=origin)
    return tree


class _Yaml12Loader(yaml.SafeLoader):
    """YAML with 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans,
    which would turn ``judge.verdict_texts=[Yes, No]`` into ``[True, False]``."""


_Yaml12Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
for _ch in "tTfF":
    _Yaml12Loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), [_ch]
    )


def _parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item or item.startswith("~"):
        raise ConfigError(
            f"override {item!r} is not of the form key=value (a.b=c or ++a.b=c); "
            "deleting keys (~a.b) is not supported"
        )
    key, raw = item.split("=", 1)
    key = key.lstrip("+").strip()
    kind = _field_type(key)
    if kind in (str, str | None) and not raw.strip().startswith(("'", '"')):
        # a text field takes the text verbatim (spaces, "yes", "1.0"); null still means None
        return key, None if raw.strip() in ("null", "~") and kind is not str else raw
    try:
        value = yaml.load(raw, Loader=_Yaml12Loader) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def _field_type(key: str) -> Any:
    section, _, name = key.partition(".")
    section_type = typing.get_type_hints(Config).get(section)
    if section_type is None:
        return None
    return typing.get_type_hints(section_type).get(name)


def _flatten(tree: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and prefix == "":
            keys.extend(_flatten(v, f"{path}."))
        else:
            keys.append(path)
    return keys


def _check_key(key: str, *, origin: str) -> None:
    parts = key.split(".")
    sections = {f.name: f for f in dataclasses.fields(Config)}
    if parts[0] not in sections:
        close = difflib.get_close_matches(parts[0], sections, n=3, cutoff=0.5)
        raise ConfigError(
            f"{origin}: unknown config section {parts[0]!r} in key {key!r}; "
            f"closest: {', '.join(close) or 'none'} (sections: {', '.join(sections)})"
        )
    section = parts[0]
    if len(parts) != 2:
        raise ConfigError(f"{origin}: config key {key!r} must be <section>.<field>")
    section_type = typing.get_type_hints(Config)[section]
    fields = [f.name for f in dataclasses.fields(section_type)]
    if parts[1] not in fields:
        close = difflib.get_close_matches(parts[1], fields, n=3, cutoff=0.5)
        raise ConfigError(
            f"{origin}: unknown config key {key!r} in section {section!r}; "
            f"closest valid names: {', '.join(f'{section}.{c}' for c in close) or 'none'}"
        )


def _assign(tree: dict[str, Any], key: str, value: Any) -> None:
    section, name = key.split(".")
    node = tree.setdefault(section, {})
    if not isinstance(node, dict):
        raise ConfigError(f"config section {section!r} must be a mapping, found {node!r}")
    node[name] = value


def _build(tree: dict[str, Any], *, check_layout: bool = True) -> Config:
    schema = OmegaConf.structured(Config)
    for key in _flatten(tree):
        _check_key(key, origin="config")
        section, name = key.split(".")
        value = tree[section][name]
        try:
            OmegaConf.update(schema, key, value, merge=False)
        except OmegaConfBaseException as err:
            expected = typing.get_type_hints(typing.get_type_hints(Config)[section])[name]
            raise ConfigError(
                f"config key {key}: value {value!r} is not a valid {type_name(expected)} "
                f"({str(err).splitlines()[0]})"
            ) from None
    try:
        cfg = OmegaConf.to_object(schema)
    except OmegaConfBaseException as err:
        raise ConfigError(str(err).splitlines()[0]) from None
    if check_layout:
        validate(cfg)
    return cfg


def type_name(tp: Any) -> str:
    """A readable name of a field type: ``int``, ``float or null``, ``list[str]``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{type_name(args[0])} or null"
    if typing.get_origin(tp) is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))
