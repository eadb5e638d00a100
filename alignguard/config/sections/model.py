"""``model``: the text-to-image model to align (and to render the pairs with)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from alignguard.config.sections.base import TOYWORLD_MODEL, ModelLocation, PositiveInt, Section
from alignguard.registry import MODEL_FAMILIES


class ModelSection(Section):
    """The text-to-image model to align (and to render the pairs with)."""

    family: str = Field(
        "toy",
        description="a registered model family (alignguard.families: toy, sd15, sd21, sdxl): its provider "
        "loads the pipeline and answers every family question (default prompt sets, output guard, "
        "calibration source, training monitor); toy is the shipped toy world, judged exactly",
    )
    path: ModelLocation = Field(
        TOYWORLD_MODEL,
        description="'toyworld' (the shipped toy model), a local diffusers directory (made absolute) or a "
        "hub id",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit) of model.path")
    variant: str | None = Field(None, description="weights variant, e.g. 'fp16'")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="dtype the pipeline is loaded in (synthesis, merge, evaluation, serving); auto: "
        "bfloat16 on CUDA, float32 on CPU",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="device of the loaded pipeline; auto: CUDA when visible, else CPU"
    )
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa",
        description="attention kernels of UNet and VAE: sdpa (torch's scaled_dot_product_attention) or "
        "eager (the reference implementation, for bit-exact comparisons)",
    )
    scheduler: Literal["ddim", "ddpm", "pndm", "euler", "euler_a", "dpm++", "lms"] | None = Field(
        None,
        description="sampling scheduler replacing the model's own (same scheduler config); null keeps it",
    )
    resolution: PositiveInt = Field(
        32,
        description="image height and width in pixels of the synthesis renders (and the training cache), "
        "and the service's default size; a multiple of 8",
    )

    @field_validator("family")
    @classmethod
    def _registered_family(cls, value: str) -> str:
        if value not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {value!r} (known: {', '.join(MODEL_FAMILIES.names())})")
        return value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value
