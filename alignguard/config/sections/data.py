"""``data``: where the prompt pairs come from and how they are split."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from alignguard.config.sections.base import InputPath, PositiveInt, Section
from alignguard.data.taxonomy import CATEGORIES, Category


class DataSection(Section):
    """Where the prompt pairs come from and how they are split."""

    source: Literal["toyworld", "csv", "llm"] = Field(
        "toyworld",
        description="toyworld: generated toy-world pairs; csv: a CoProV2-format file (data.path); llm: "
        "pairs written by synthesis.llm in the prompt stage",
    )
    path: InputPath | None = Field(None, description="CoProV2-format CSV when source is 'csv'")
    categories: tuple[Category, ...] = Field(
        CATEGORIES,
        description="categories to align: pairs outside them are dropped; training.experts per_category "
        "trains one expert for each",
    )
    max_pairs_per_category: PositiveInt | None = Field(
        None, description="keep at most this many pairs per primary category (lowest pair ids); null: all"
    )
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.1,
        description="share of pairs held out from training, in [0, 1); split by concept (else by "
        "normalised prompt) with run.seed",
    )
    dedup: bool = Field(
        True,
        description="drop pairs whose (unsafe, safe) prompts repeat an earlier pair's, after normalisation",
    )

    @model_validator(mode="after")
    def _source_needs_path(self) -> DataSection:
        if self.source == "csv" and not self.path:
            raise ValueError("data.path is required when data.source is 'csv'")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("data.categories lists a category twice")
        return self
