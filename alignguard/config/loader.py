"""Loading experiment YAMLs with ``key.sub=value`` overrides.

A YAML may start with ``extends: other.yaml`` (a path relative to it) to inherit another
file and change a few keys; mappings are merged deeply, everything else is replaced.
Override values are parsed as YAML scalars/flow collections (``8``, ``null``, ``[a, b]``).
Any problem raises :class:`ConfigError` with the full dotted key path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from alignguard.config.identity import identity_hash
from alignguard.config.schema import ExperimentConfig

_EXTENDS_KEY = "extends"
_MAX_EXTENDS_DEPTH = 8


class ConfigError(ValueError):
    """An invalid configuration: the message names the key path and what to do."""


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read ``path`` (None: the schema's defaults), apply ``overrides`` (``"a.b=value"``), validate.

    This is the one override parser of every command (``alignguard guard --set`` included).

    Raises:
        ConfigError: the file is missing or not YAML, an override is malformed, or a key is
            unknown or its value invalid. The message names the dotted key.
    """
    raw = {} if path is None else _read_with_extends(Path(path), depth=0)
    overrides = list(overrides)
    for override in overrides:
        key, value = parse_override(override)
        _set_dotted(raw, key, value)
    source = str(path) if path is not None else "defaults" + (" + overrides" if overrides else "")
    return config_from_dict(raw, source=source)


def config_from_dict(raw: Mapping[str, Any], source: str = "<dict>") -> ExperimentConfig:
    """Validate a plain mapping into an :class:`ExperimentConfig`."""
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``"training.lora.rank=8"`` into ``("training.lora.rank", 8)``."""
    key, sep, value_text = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} is not of the form key.sub=value")
    try:
        value = yaml.safe_load(value_text) if value_text.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse override value {value_text!r}: {exc}") from None
    return key, value


def config_to_yaml(config: ExperimentConfig) -> str:
    """The resolved config as YAML (plain types, key order of the schema)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def config_hash(config: ExperimentConfig) -> str:
    """A stable sha256 of the resolved config, for manifests."""
    return identity_hash(config.model_dump(mode="json"))


def _read_with_extends(path: Path, depth: int) -> dict[str, Any]:
    if depth > _MAX_EXTENDS_DEPTH:
        raise ConfigError(f"{path}: '{_EXTENDS_KEY}' chain is deeper than {_MAX_EXTENDS_DEPTH} (a cycle?)")
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    parent = data.pop(_EXTENDS_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: '{_EXTENDS_KEY}' must be a path to another YAML file")
    base = _read_with_extends((path.parent / parent).resolve(), depth + 1)
    return _deep_merge(base, data)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"{key}: cannot set a sub-key, {prefix} is a value ({child!r}), not a section")
        node = child
    node[parts[-1]] = value


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for error in exc.errors():
        loc = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-"))
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `alignguard config` prints every valid key)"
        elif "input" in error and not isinstance(error["input"], dict):
            message = f"{message} (got {error['input']!r})"
        lines.append(f"  {loc or '<top level>'}: {message}")
    return "\n".join(lines)
