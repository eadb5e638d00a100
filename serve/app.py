"""Building the Serve application from an experiment config.

- :func:`build_application` (Python): ``Ingress`` (CPU) → ``Generator`` (``resources.serve``),
  with optional guard deployments bound in;
- :func:`build_app` (the ``import_path`` of ``serve/config.yaml``): the same from
  ``args: {config: ..., overrides: [...]}``, checked strictly because Serve itself ignores
  unknown keys.

Every Serve option comes from ``config.serve``: the generator's batching, replica bounds
(``max_ongoing_requests`` / ``max_queued_requests``, with 503 + ``Retry-After`` beyond) and
autoscaling; the ingress's own (high) ``max_ongoing_requests`` — Serve's default of 5 would
silently cap batching and autoscaling downstream.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from alignguard.config import ConfigError, load_config
from alignguard.config.schema import ExperimentConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY_WORKER_PORTS = range(10002, 20000)  # keep HTTP ports out of it (see the Ray notes)
HTTP_TIMEOUT_SLACK_S = 5.0  # the proxy's limit sits above ours, so clients get our 504 and message


class AppArgs(BaseModel):
    """The ``args`` of an application in ``serve/config.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str = Field("configs/toy.yaml", description="experiment YAML (relative: cwd, then repo root)")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value overrides")


def resolve_config_path(path: str) -> Path:
    """``path`` as given, else relative to the repository root (Serve may build apps elsewhere)."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate
    return REPO_ROOT / path


def service_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The validated config, with a relative local ``run.output_dir`` made absolute (replicas do
    not share the caller's working directory) and the request size bounds checked against the
    model's default resolution."""
    config = load_config(resolve_config_path(str(path)), list(overrides))
    if "://" not in config.run.output_dir:  # a local path (object-store URIs are left alone)
        absolute = os.path.abspath(os.path.expanduser(config.run.output_dir))
        config = config.model_copy(update={"run": config.run.model_copy(update={"output_dir": absolute})})
    limits = config.serve.limits
    size = limits.default_size or config.model.resolution
    if not limits.min_size <= size <= limits.max_size:
        raise ConfigError(
            f"serve.limits: the default size {size} (model.resolution) is outside "
            f"[min_size {limits.min_size}, max_size {limits.max_size}]"
        )
    return config


def generator_options(config: ExperimentConfig) -> dict[str, Any]:
    serve, resources = config.serve, config.resources.serve
    auto = serve.autoscaling
    return {
        "ray_actor_options": {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
        "max_ongoing_requests": serve.max_ongoing_requests,
        "max_queued_requests": serve.max_queued_requests,
        "autoscaling_config": {
            "min_replicas": auto.min_replicas,
            "initial_replicas": max(auto.min_replicas, 1),
            "max_replicas": auto.max_replicas,
            "target_ongoing_requests": auto.target_ongoing_requests,
            "upscale_delay_s": auto.upscale_delay_s,
            "downscale_delay_s": auto.downscale_delay_s,
        },
        "backpressure_config": {"status_code": 503, "retry_after_s": serve.retry_after_s},
        "graceful_shutdown_timeout_s": serve.graceful_shutdown_timeout_s,
        "health_check_period_s": 10.0,
        "health_check_timeout_s": 30.0,
    }


def ingress_options(config: ExperimentConfig, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    serve = config.serve
    actor: dict[str, Any] = {"num_cpus": serve.ingress.num_cpus}
    if env_vars:
        actor["runtime_env"] = {"env_vars": env_vars}
    return {
        "ray_actor_options": actor,
        "num_replicas": serve.ingress.num_replicas,
        "max_ongoing_requests": serve.ingress.max_ongoing_requests,
        "max_queued_requests": serve.ingress.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": serve.retry_after_s},
        "graceful_shutdown_timeout_s": serve.graceful_shutdown_timeout_s,
    }


def http_options(config: ExperimentConfig, port: int | None = None) -> dict[str, Any]:
    return {
        "host": config.serve.host,
        "port": config.serve.port if port is None else port,
        "request_timeout_s": config.serve.request_timeout_s + HTTP_TIMEOUT_SLACK_S,
    }


def build_application(
    config: ExperimentConfig, prompt_guard: Any = None, image_guard: Any = None, forward_api_key: bool = False
):
    """The bound application; guards are bound deployments (``Guard.bind(...)``) or None — with
    ``guard.enabled`` the project's prompt and output guards are bound here.

    ``forward_api_key``: copy ``$<serve.api_key_env>`` from this process into the ingress's
    environment (local runs); on a cluster, set it in the nodes' environment instead."""
    from serve.generator import Generator
    from serve.ingress import Ingress

    if prompt_guard is None and image_guard is None and config.guard.enabled:
        from serve.guard_deployments import bind_guards

        prompt_guard, image_guard = bind_guards(config)
    env = {}
    name = config.serve.api_key_env
    if forward_api_key and name and os.environ.get(name):
        env[name] = os.environ[name]
    data = config.model_dump(mode="json")
    generator = Generator.options(**generator_options(config)).bind(data)
    return Ingress.options(**ingress_options(config, env)).bind(generator, data, prompt_guard, image_guard)


def build_app(args: dict[str, Any]):
    """Application builder for ``serve run`` / ``serve deploy`` (``import_path: serve.app:build_app``)."""
    parsed = AppArgs.model_validate(args or {})
    return build_application(service_config(parsed.config, parsed.overrides))
