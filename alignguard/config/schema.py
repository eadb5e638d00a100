"""Typed, frozen experiment configuration: the reference documentation of every key.

One YAML file per experiment fills :class:`ExperimentConfig`; every section is a frozen
pydantic model that forbids unknown keys, so a typo fails loudly with its full key path
(see :mod:`alignguard.config.loader`). Defaults are the toy world's; the SD configs override.
Each section lives in :mod:`alignguard.config.sections`; every field carries its help text
(``alignguard config --explain KEY`` prints it).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from alignguard.config.sections.base import (
    TOYWORLD_MODEL,
    InputPath,
    ModelLocation,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    RunLocation,
    Section,
)
from alignguard.config.sections.data import DataSection
from alignguard.config.sections.evaluation import EvaluationSection, PromptSetSpec
from alignguard.config.sections.guard import (
    GuardAction,
    GuardCategoryPolicy,
    GuardOutputSection,
    GuardPolicySection,
    GuardSection,
)
from alignguard.config.sections.merge import (
    CalibrationSection,
    CoMergeGranularity,
    CoMergeRouting,
    MergeBaseline,
    MergeRule,
    MergeSection,
    MergeStrategy,
    RefineSection,
)
from alignguard.config.sections.model import ModelSection
from alignguard.config.sections.resources import ResourcesSection, StageResources, TrainingResources
from alignguard.config.sections.run import RunSection
from alignguard.config.sections.serve import AutoscalingSection, IngressSection, ServeLimits, ServeSection
from alignguard.config.sections.synthesis import LLMSection, SynthesisSection
from alignguard.config.sections.training import LoraSection, TrainingSection

__all__ = [
    "TOYWORLD_MODEL",
    "AutoscalingSection",
    "CalibrationSection",
    "CoMergeGranularity",
    "CoMergeRouting",
    "DataSection",
    "EvaluationSection",
    "ExperimentConfig",
    "GuardAction",
    "GuardCategoryPolicy",
    "GuardOutputSection",
    "GuardPolicySection",
    "GuardSection",
    "IngressSection",
    "InputPath",
    "LLMSection",
    "LoraSection",
    "MergeBaseline",
    "MergeRule",
    "MergeSection",
    "MergeStrategy",
    "ModelLocation",
    "ModelSection",
    "NonNegativeFloat",
    "NonNegativeInt",
    "PositiveFloat",
    "PositiveInt",
    "Probability",
    "PromptSetSpec",
    "RefineSection",
    "ResourcesSection",
    "RunLocation",
    "RunSection",
    "Section",
    "ServeLimits",
    "ServeSection",
    "StageResources",
    "SynthesisSection",
    "TrainingResources",
    "TrainingSection",
]


class ExperimentConfig(Section):
    """A whole experiment: one YAML under ``configs/``."""

    run: RunSection = Field(RunSection(), description="where the run's artifacts go and how it is seeded")
    model: ModelSection = Field(ModelSection(), description="the text-to-image model to align")
    data: DataSection = Field(DataSection(), description="where the prompt pairs come from, how they split")
    synthesis: SynthesisSection = Field(
        SynthesisSection(), description="rendering both images of every pair (and the prompt-writing LLM)"
    )
    training: TrainingSection = Field(
        TrainingSection(), description="the Diffusion-DPO safety experts, one LoRA per category"
    )
    merge: MergeSection = Field(MergeSection(), description="merging the experts into one LoRA")
    evaluation: EvaluationSection = Field(
        EvaluationSection(), description="rendering fixed prompts and seeds with every model, and scoring"
    )
    serve: ServeSection = Field(ServeSection(), description="guarded generation over HTTP on Ray Serve")
    guard: GuardSection = Field(GuardSection(), description="the prompt guard, its policy, the output guard")
    resources: ResourcesSection = Field(
        ResourcesSection(), description="per-stage workers: scales a config from a laptop to a cluster"
    )

    @model_validator(mode="after")
    def _cross_section_rules(self) -> ExperimentConfig:
        if self.data.source == "llm" and not self.synthesis.llm.path:
            raise ValueError("synthesis.llm.path is required when data.source is 'llm'")
        return self
