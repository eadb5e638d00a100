"""Loading the toy model: the shipped one or any directory the builder wrote."""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from alignguard.config.schema import ModelSection
from alignguard.models.loading import load_pipeline


def toy_model_section(path: str = "toyworld") -> ModelSection:
    """The model config of the toy world (CPU, float32); ``path`` defaults to the shipped model."""
    return ModelSection(family="toy", path=path, device="cpu", dtype="float32", resolution=32)


def load_toy_pipeline(path: str = "toyworld") -> StableDiffusionPipeline:
    """The toy model as a ``StableDiffusionPipeline`` (loaded exactly like SD1.5)."""
    return load_pipeline(toy_model_section(path))
