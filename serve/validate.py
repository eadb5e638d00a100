"""Checking a Serve config file (``serve/config.yaml``) before ``serve run`` / ``serve deploy``.

Ray's own schema (:class:`ray.serve.schema.ServeDeploySchema`) accepts the file's structure, but
it **ignores unknown keys**: ``max_ongoing_request: 64`` (a typo) would be dropped silently.
So this module also walks the raw YAML against the schema's fields and reports every key Ray
would ignore, validates our application ``args`` strictly (:class:`serve.app.AppArgs`) and loads
the experiment config they name, and cross-checks the two (timeouts, names, deployments).
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from alignguard.config import ConfigError

OUR_IMPORT_PATH = "serve.app:build_app"
OUR_DEPLOYMENTS = {"Ingress", "Generator"}


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic model classes inside an annotation (``Optional[List[Model]]`` -> ``[Model]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_list(arg) for arg in typing.get_args(annotation))
    return False


def unknown_keys(model: type[BaseModel], data: Any, where: str = "") -> list[str]:
    """Dotted paths of keys in ``data`` that ``model`` does not define (recursively)."""
    if not isinstance(data, dict):
        return []
    known: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        for key in (name, field.alias, field.validation_alias):
            if isinstance(key, str):
                known[key] = field.annotation
    extra_allowed = model.model_config.get("extra") == "allow"
    problems = []
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in known:
            if not extra_allowed:
                problems.append(path)
            continue
        nested = _models_in(known[key])
        if not nested:
            continue
        items = value if isinstance(value, list) and _is_list(known[key]) else [value]
        for index, item in enumerate(items):
            item_path = f"{path}[{index}]" if items is value else path
            problems += unknown_keys(nested[0], item, item_path)
    return problems


def check_serve_config(path: str | Path) -> list[str]:
    """Every problem with a Serve config file (empty when ``serve run`` / ``serve deploy`` would
    get exactly what the file says)."""
    from ray.serve.schema import ServeDeploySchema

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        return [f"cannot read {path}: {exc}"]
    if not isinstance(raw, dict):
        return [f"{path}: expected a mapping at the top level"]
    try:
        schema = ServeDeploySchema.model_validate(raw)
    except ValidationError as exc:
        return [f"Ray's ServeDeploySchema rejects it: {exc}"]
    problems = [
        f"unknown key {key!r} (Ray Serve would ignore it)" for key in unknown_keys(ServeDeploySchema, raw)
    ]
    for index, app in enumerate(schema.applications):
        if app.import_path == OUR_IMPORT_PATH:
            problems += [f"applications[{index}] ({app.name}): {p}" for p in _check_our_app(app, schema)]
    return problems


def _check_our_app(app: Any, schema: Any) -> list[str]:
    from serve.app import HTTP_TIMEOUT_SLACK_S, AppArgs, service_config

    problems = [
        f"deployment {d.name!r} does not exist (ours: {sorted(OUR_DEPLOYMENTS)})"
        for d in app.deployments
        if d.name not in OUR_DEPLOYMENTS
    ]
    try:
        args = AppArgs.model_validate(app.args or {})
        config = service_config(args.config, args.overrides)
    except (ValidationError, ConfigError, FileNotFoundError) as exc:
        return [*problems, f"args: {exc}"]
    serve = config.serve
    if app.name != serve.app_name:
        problems.append(f"name {app.name!r} differs from serve.app_name {serve.app_name!r}")
    if app.route_prefix not in (None, serve.route_prefix):
        problems.append(
            f"route_prefix {app.route_prefix!r} differs from serve.route_prefix {serve.route_prefix!r}"
        )
    timeout = schema.http_options.request_timeout_s
    if timeout is not None and timeout < serve.request_timeout_s + HTTP_TIMEOUT_SLACK_S:
        wanted = serve.request_timeout_s + HTTP_TIMEOUT_SLACK_S
        problems.append(
            f"http_options.request_timeout_s ({timeout}) should be at least serve.request_timeout_s + "
            f"{HTTP_TIMEOUT_SLACK_S:g} ({wanted:g}) so clients get the service's own 504 with a message"
        )
    return problems


def validate_serve_config(path: str | Path) -> None:
    """Raise :class:`~alignguard.config.ConfigError` listing every problem, if any."""
    problems = check_serve_config(path)
    if problems:
        raise ConfigError(f"{path}:\n  " + "\n  ".join(problems))
