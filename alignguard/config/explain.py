"""The schema as reference documentation: ``alignguard config --explain KEY``.

Every field of :class:`~alignguard.config.schema.ExperimentConfig` carries a description; this
module finds a dotted key (``training.lora.rank``) in the schema and renders its type, default and
help, or, for a section (``training``), one line per field. Keys inside a list of sections (the
entries of ``evaluation.prompt_sets``) are reached the same way: ``evaluation.prompt_sets.kind``.
"""

from __future__ import annotations

import difflib
import json
import types
import typing
from collections.abc import Iterator
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from alignguard.config.loader import ConfigError
from alignguard.config.schema import ExperimentConfig

_CONSTRAINTS = {
    annotated_types.Gt: ("gt", "> {}"),
    annotated_types.Ge: ("ge", ">= {}"),
    annotated_types.Lt: ("lt", "< {}"),
    annotated_types.Le: ("le", "<= {}"),
}


def section_of(annotation: Any) -> type[BaseModel] | None:
    """The config section a field holds (itself, in a list, or optional), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = section_of(arg)
        if found is not None:
            return found
    return None


def config_keys(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> Iterator[str]:
    """Every dotted key of ``model``, sections before their fields."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key
        nested = section_of(field.annotation)
        if nested is not None:
            yield from config_keys(nested, key + ".")


def explain(key: str, config: BaseModel | None = None) -> str:
    """Type, default and help of ``key``; for a section, its fields with one-line help.

    ``config`` (optional) adds the key's value in that config. Raises :class:`ConfigError` for an
    unknown key, naming the closest known ones."""
    if not key.strip():
        raise ConfigError("--explain needs a key, e.g. training or training.lora.rank")
    field = _lookup(key)
    lines = [key, f"  type:    {type_text(field)}", f"  default: {default_text(field)}"]
    value = _value_in(config, key)
    if value is not None:
        lines.append(f"  value:   {value}")
    lines.append(f"  {field.description}")
    nested = section_of(field.annotation)
    if nested is not None:
        lines += ["", f"  fields of {key}:", *_field_lines(nested, indent="    ")]
    return "\n".join(lines)


def type_text(field: FieldInfo) -> str:
    """The field's type in YAML terms, with its bounds: ``float (> 0)``, ``list of str``."""
    text = _annotation_text(field.annotation)
    bounds = _bounds(field.metadata)
    return f"{text} ({bounds})" if bounds else text


def default_text(field: FieldInfo) -> str:
    if field.default is PydanticUndefined:
        return "required"
    if isinstance(field.default, BaseModel):
        return "(section: the defaults of its fields)"
    return json.dumps(_plain(field.default), ensure_ascii=False)


def _lookup(key: str) -> FieldInfo:
    model: type[BaseModel] | None = ExperimentConfig
    parts = key.split(".")
    field: FieldInfo | None = None
    for depth, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            raise ConfigError(_unknown_key_message(key, ".".join(parts[:depth]), model is None))
        field = model.model_fields[part]
        model = section_of(field.annotation)
    assert field is not None  # parts is never empty
    return field


def _unknown_key_message(key: str, parent: str, parent_is_value: bool) -> str:
    if parent_is_value:
        return f"unknown config key {key!r}: {parent} is a value, not a section"
    keys = list(config_keys())
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(key, keys, n=5, cutoff=0.6)
    close += [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close]
    sections = ", ".join(ExperimentConfig.model_fields)
    hint = f"; did you mean {', '.join(close[:6])}?" if close else f"; the sections are {sections}"
    return f"unknown config key {key!r}{hint}"


def _field_lines(model: type[BaseModel], indent: str) -> list[str]:
    width = max(len(name) for name in model.model_fields)
    lines = []
    for name, field in model.model_fields.items():
        default = "a section" if section_of(field.annotation) else f"default {default_text(field)}"
        lines.append(f"{indent}{name:<{width}}  {field.description} ({default})")
    return lines


def _value_in(config: BaseModel | None, key: str) -> str | None:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, BaseModel):
            return None  # no config, or a key inside a list of sections
        node = getattr(node, part)
    if isinstance(node, BaseModel):
        return None  # a section: its fields show their own values
    return json.dumps(_plain(node), ensure_ascii=False)


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


def _annotation_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " | ".join(str(arg) for arg in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_annotation_text(arg) for arg in args if arg is not type(None)]
        return " | ".join(parts) + (" | null" if type(None) in args else "")
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {_annotation_text(args[0])}"
        return "[" + ", ".join(_annotation_text(arg) for arg in args) + "]"
    if origin is Annotated:
        metadata = [
            m for info in args[1:] for m in (info.metadata if isinstance(info, FieldInfo) else [info])
        ]
        bounds = _bounds(metadata)
        return f"{_annotation_text(args[0])} ({bounds})" if bounds else _annotation_text(args[0])
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    return getattr(annotation, "__name__", str(annotation))


def _bounds(metadata: list) -> str:
    parts = []
    for item in metadata:
        if type(item) in _CONSTRAINTS:
            attribute, template = _CONSTRAINTS[type(item)]
            parts.append(template.format(getattr(item, attribute)))
        elif isinstance(item, annotated_types.MinLen) and item.min_length:
            parts.append("non-empty")
        elif getattr(item, "pattern", None):
            parts.append(f"matching {item.pattern}")
    return ", ".join(parts)
