"""Model families as plug-ins: everything that differs between the toy model, SD1.5/2.1 and SDXL.

``get_family(config.model.family)`` answers what a stage needs to know about the model (how to load
it, which prompts evaluate it, which guard reads its images, ...); see :class:`ModelFamily`.
A new family is a module here with a :class:`ModelFamily` and one :func:`register_family` call (or a
line in :data:`alignguard.registry.MODEL_FAMILIES` for a built-in one).
"""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline

from alignguard.config.schema import ModelSection
from alignguard.families.base import ATTENTION_PROJECTIONS, ModelFamily
from alignguard.registry import MODEL_FAMILIES


def get_family(name: str) -> ModelFamily:
    """The provider registered as ``name``; :class:`~alignguard.registry.UnknownPluginError`
    (a ``KeyError``) names the known families otherwise."""
    return MODEL_FAMILIES.get(name)


def register_family(family: ModelFamily, replace: bool = False) -> None:
    """Make ``family`` available as ``model.family: <family.name>``."""
    MODEL_FAMILIES.register(family.name, family, replace=replace)


def known_families() -> tuple[str, ...]:
    return MODEL_FAMILIES.names()


def resolve_model_path(spec: ModelSection) -> str:
    """The directory or hub id that ``spec.path`` names for its family."""
    return get_family(spec.family).resolve_path(spec.path)


def load_pipeline(
    spec: ModelSection, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> DiffusionPipeline:
    """The text-to-image pipeline ``spec`` names, on ``device`` in ``dtype`` (``spec``'s when None)."""
    return get_family(spec.family).load_pipeline(spec, device, dtype)


__all__ = [
    "ATTENTION_PROJECTIONS",
    "ModelFamily",
    "get_family",
    "known_families",
    "load_pipeline",
    "register_family",
    "resolve_model_path",
]
