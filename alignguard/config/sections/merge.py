"""``merge``: merging the category experts into one LoRA (Co-Merge, its calibration, refinement)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from alignguard.config.sections.base import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)


class CalibrationSection(Section):
    """Co-Merge's calibration set: prompts of every category, noised latents at sampled timesteps."""

    prompts_per_category: PositiveInt = Field(
        16, description="prompts (unsafe and their safe twins) drawn per category of data.categories"
    )
    benign_prompts: NonNegativeInt = Field(
        32, description="benign prompts added to the set (plus the empty prompt, CFG's unconditional input)"
    )
    timesteps: PositiveInt = Field(4, description="noise levels sampled per calibration sample")
    seed: NonNegativeInt = Field(0, description="seed of the prompts drawn, their noise and timesteps")
    source: Literal["auto", "toyworld", "synthesis"] = Field(
        "auto",
        description="toyworld: ground-truth toy scenes; synthesis: the synthesis stage's training cache "
        "(must be complete); auto: toyworld for model.family 'toy', else synthesis",
    )
    batch_size: PositiveInt = Field(32, description="calibration samples per UNet forward pass")


# The merge rules besides Co-Merge; alignguard.merge.strategies takes its names from here.
MergeRule = Literal[
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "concat",
]
MergeStrategy = Literal["co_merge", MergeRule]  # nested Literals flatten
CoMergeGranularity = Literal["token", "element", "row"]
CoMergeRouting = Literal["winner", "active"]
MergeBaseline = Literal["co_merge_element", "co_merge_row", "co_merge_token", MergeRule]


class RefineSection(Section):
    """Distil every expert into the merged LoRA, end to end (``alignguard/merge/refine.py``).

    Needs the synthesis stage's training cache (the model's renders of each category's pairs)."""

    steps: NonNegativeInt = Field(0, description="optimizer steps; 0 writes the merge as it is")
    learning_rate: PositiveFloat = Field(3e-3, description="AdamW learning rate of the merged LoRA's factors")
    batch_size: PositiveInt = Field(
        32, description="distillation inputs per step (split over the categories)"
    )
    preserve_weight: NonNegativeFloat = Field(
        1.0, description="weight of keeping the base model's predictions on safe and empty prompts"
    )
    probe_size: PositiveInt = Field(64, description="fixed inputs per category for the retention report")
    seed: NonNegativeInt = Field(
        0, description="seed of the distillation inputs (the probe set uses seed + 1)"
    )


class MergeSection(Section):
    """Merging the category experts into one LoRA."""

    strategy: MergeStrategy = Field(
        "co_merge",
        description="co_merge (calibrated, per merge.granularity), or a rule on the experts' full ΔW: "
        "linear (mean), task_arithmetic (sum), ties, dare_linear, dare_ties, magnitude_prune, concat "
        "(exact sum as stacked factors)",
    )
    granularity: CoMergeGranularity = Field(
        "token",
        description="co_merge: winner per input token (least-squares fit), weight entry, or output row",
    )
    threshold: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.4,
        description="token-wise co_merge: an expert is active on a token at ≥ this × its peak activation",
    )
    routing: CoMergeRouting = Field(
        "winner",
        description="token-wise co_merge: a token takes its top active expert, or the sum of its active ones",
    )
    ridge: PositiveFloat = Field(
        1e-3, description="token-wise co_merge: ridge of the least-squares fit, × tr(G)/d"
    )
    rank: PositiveInt | None = Field(None, description="SVD rank of the merged LoRA; null keeps it exact")
    density: Annotated[float, Field(gt=0, le=1)] = Field(
        0.5,
        description="ties, magnitude_prune: share of each ΔW's entries kept (by magnitude); dare_*: keep "
        "probability of each entry, in (0, 1]",
    )
    calibration: CalibrationSection = Field(CalibrationSection(), description="co_merge's calibration set")
    scale: PositiveFloat = Field(1.0, description="λ multiplying the merged ΔW (every strategy)")
    svd: Literal["exact", "randomized"] = Field("exact", description="SVD used when merge.rank is set")
    baselines: tuple[MergeBaseline, ...] = Field(
        (), description="also write these merges to <run>/merge_baselines/<name>/ (same rank, density, scale)"
    )
    refine: RefineSection = Field(
        RefineSection(), description="end-to-end distillation of the experts into the merge (after it)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> MergeSection:
        if self.strategy == "concat" and self.rank is not None:
            raise ValueError(
                "merge.rank must be null for strategy 'concat' (concatenation is exact by definition; "
                "use task_arithmetic with merge.rank for a truncated sum)"
            )
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError("merge.baselines lists a baseline twice")
        return self
