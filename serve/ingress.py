"""The HTTP ingress deployment (CPU): validation, API key, guards, image encoding.

Its FastAPI app is built per replica (``__serve_build_asgi_app__``) from the experiment config,
so the request bounds in ``/docs`` are the configured ones. Guards plug in as optional
deployment handles (see :mod:`serve.guards`).
"""

from __future__ import annotations

import logging
import os

from ray import serve

from alignguard.config.schema import ExperimentConfig
from serve.adapters import AdapterCatalog
from serve.guards import Guards
from serve.service import Service, load_tokenizer

log = logging.getLogger(__name__)


class MissingAPIKey(RuntimeError):
    """``serve.api_key_env`` names a variable that is not set: refuse to run unauthenticated."""


def api_key_from_env(name: str | None) -> str | None:
    if name is None:
        return None
    key = os.environ.get(name, "")
    if not key:
        raise MissingAPIKey(f"serve.api_key_env is {name!r} but ${name} is empty or not set")
    return key


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    def __init__(self, generator, config: dict, prompt_guard=None, image_guard=None) -> None:
        cfg = ExperimentConfig.model_validate(config)
        catalog = AdapterCatalog.discover(cfg.run.output_dir, cfg.serve)
        guards = Guards(
            prompt_guard, image_guard, cfg.serve.request_timeout_s, policy_aware=cfg.guard.enabled
        )
        self.service = Service(generator, cfg, catalog, load_tokenizer(cfg.model), guards)
        self.service.api_key = api_key_from_env(cfg.serve.api_key_env)
        if catalog.base_only:
            log.warning("BASE-ONLY mode: %s", catalog.default_reason)

    def __serve_build_asgi_app__(self):
        from serve.api import build_api

        return build_api(self.service)
