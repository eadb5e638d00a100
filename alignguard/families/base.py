"""What the rest of the library asks of a model family, in one place.

A family is one kind of text-to-image model (the toy model, SD1.5/2.1, SDXL; flow-matching
transformers such as SD3 or Flux later). Callers never compare family names: they ask the
family's provider (:func:`alignguard.families.get_family`) for the answer, so a new family is one
module here plus one registration line, and no caller changes.

Providers are stateless and frozen. They sit low in the library (they import the config, the
model loading mechanics and the toy world, nothing that trains, merges, evaluates or guards), so
every stage can consult them; what they return is therefore data — a pipeline, names, kinds, flags —
which the stages act on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from alignguard.config.schema import ModelSection, PromptSetSpec
from alignguard.models.loading import load_diffusers_pipeline

# The attention projections of a diffusers UNet or transformer block (training.lora's default).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
# Prompt-set formats every family can render: they carry their own prompts (and judges).
CSV_PROMPT_FORMATS = ("coprov2", "prompts")


@dataclass(frozen=True)
class ModelFamily(ABC):
    """The provider of one model family.

    Attributes:
        name: the ``model.family`` value.
        prediction_type: what the denoiser predicts in the released weights (``epsilon``,
            ``v_prediction``; training reads the scheduler's own config, this documents it).
        default_resolution: the released weights' image size in pixels.
        lora_target_modules: the layers ``training.lora.target_modules`` should name for it.
        output_guard: ``guard.output.kind`` when ``auto``: ``nudenet`` for real images,
            ``toy_judge`` where an exact judge reads the images.
        calibration_source: ``merge.calibration.source`` when ``auto``, or None for the
            synthesis stage's cache (the model's own renders).
        prompt_formats: the evaluation prompt-set formats it can be evaluated on.
        default_prompt_formats: the prompt sets ``evaluation.prompt_sets: []`` means.
        judges_training: a training monitor judges its images while it trains.
        report_suite: the pipeline ends with a results table of base, experts and merged LoRA on
            the family's own report suite.
    """

    name: str
    prediction_type: str
    default_resolution: int
    lora_target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    output_guard: str = "nudenet"
    calibration_source: str | None = None
    prompt_formats: tuple[str, ...] = CSV_PROMPT_FORMATS
    default_prompt_formats: tuple[str, ...] = ()
    judges_training: bool = False
    report_suite: bool = False

    @abstractmethod
    def pipeline_class(self) -> type[DiffusionPipeline]:
        """The diffusers pipeline class its weights load into."""

    def load_kwargs(self) -> Mapping[str, object]:
        """Extra ``from_pretrained`` arguments of its pipeline class."""
        return {}

    def resolve_path(self, path: str) -> str:
        """The directory or hub id that ``model.path`` names."""
        return path

    def load_pipeline(
        self, spec: ModelSection, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> DiffusionPipeline:
        """The pipeline ``spec`` names, on ``device`` in ``dtype`` (``spec``'s when None)."""
        path = self.resolve_path(spec.path)
        return load_diffusers_pipeline(spec, self.pipeline_class(), path, device, dtype, self.load_kwargs())

    def default_prompt_sets(self) -> tuple[PromptSetSpec, ...]:
        """``evaluation.prompt_sets`` when the config leaves it empty."""
        return tuple(PromptSetSpec(name=f, format=f) for f in self.default_prompt_formats)  # type: ignore[arg-type]
