"""Loading the toy model: the shipped one or any directory the builder wrote."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from alignguard.config.schema import TOYWORLD_MODEL, ModelSection
from alignguard.models.loading import NO_SAFETY_CHECKER, load_diffusers_pipeline
from alignguard.toyworld.paths import shipped_model_dir


def toy_model_section(path: str = TOYWORLD_MODEL) -> ModelSection:
    """The model config of the toy world (CPU, float32); ``path`` defaults to the shipped model."""
    return ModelSection(family="toy", path=path, device="cpu", dtype="float32", resolution=32)


def toy_model_path(path: str) -> str:
    """The directory to load: ``toyworld`` names the shipped toy model, anything else itself."""
    return str(shipped_model_dir()) if path == TOYWORLD_MODEL else path


def load_toy_pipeline(path: str = TOYWORLD_MODEL) -> StableDiffusionPipeline:
    """The toy model as a ``StableDiffusionPipeline`` (loaded exactly like SD1.5)."""
    spec = toy_model_section(path)
    return load_diffusers_pipeline(
        spec, StableDiffusionPipeline, toy_model_path(path), extra_kwargs=NO_SAFETY_CHECKER
    )
