"""Stable Diffusion 1.5 and 2.1: one pipeline class; 2.1 predicts v at 768 px."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diffusers import DiffusionPipeline, StableDiffusionPipeline

from alignguard.families.base import ModelFamily
from alignguard.models.loading import NO_SAFETY_CHECKER


@dataclass(frozen=True)
class StableDiffusionFamily(ModelFamily):
    """A ``StableDiffusionPipeline`` model (UNet, one CLIP text encoder, VAE)."""

    def pipeline_class(self) -> type[DiffusionPipeline]:
        return StableDiffusionPipeline

    def load_kwargs(self) -> Mapping[str, object]:
        return NO_SAFETY_CHECKER


SD15 = StableDiffusionFamily(name="sd15", prediction_type="epsilon", default_resolution=512)
SD21 = StableDiffusionFamily(name="sd21", prediction_type="v_prediction", default_resolution=768)
