"""``run``: where a run's artifacts go and how it is seeded."""

from __future__ import annotations

from pydantic import Field

from alignguard.config.sections.base import NAME_PATTERN, NonNegativeInt, RunLocation, Section


class RunSection(Section):
    """Where a run's artifacts go and how it is seeded."""

    name: str = Field(
        "alignguard",
        pattern=NAME_PATTERN,
        description="label of the run (letters, digits, '.', '_', '-'); recorded in the evaluation metrics",
    )
    output_dir: RunLocation = Field(
        "runs/toy",
        description="the run directory every stage reads and writes: a local path (made absolute where "
        "the config is loaded), s3:// or gs:// URI",
    )
    seed: NonNegativeInt = Field(
        0,
        description="master seed: toy-world pairs, the train/test split, synthesis shards, training "
        "batches and noise, the merge (evaluation has its own, evaluation.seed)",
    )
