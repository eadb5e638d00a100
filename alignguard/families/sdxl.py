"""Stable Diffusion XL: two text encoders, pooled embeddings and size conditioning."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

from alignguard.families.base import ModelFamily


@dataclass(frozen=True)
class StableDiffusionXLFamily(ModelFamily):
    """A ``StableDiffusionXLPipeline`` model (it ships no safety checker)."""

    def pipeline_class(self) -> type[DiffusionPipeline]:
        return StableDiffusionXLPipeline


SDXL = StableDiffusionXLFamily(name="sdxl", prediction_type="epsilon", default_resolution=1024)
