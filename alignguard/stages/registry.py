"""Every stage of a run, in pipeline order: the one list the CLI and ``cluster.pipeline`` read.

Adding a sharded stage is one module (a :class:`~alignguard.stages.sharded.ShardedStage`) plus one
line here; ``cluster.pipeline`` then runs it on the Ray Data runner like any other. Stage classes
are named by import path, so reading this list (``alignguard pipeline --help``) imports no model
code and no Ray.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from alignguard.config.schema import ExperimentConfig
from alignguard.stages.sharded import ShardedStage


@dataclass(frozen=True)
class StageEntry:
    name: str
    sharded: str | None = None  # "module:Class" of a ShardedStage; None: a stage with its own runner
    in_pipeline: bool = True  # False: run by another stage (prompts, by synthesis for data.source=llm)


REGISTRY: tuple[StageEntry, ...] = (
    StageEntry("prompts", "alignguard.stages.prompts:PromptStage", in_pipeline=False),
    StageEntry("synthesis", "alignguard.stages.synthesis:SynthesisStage"),
    StageEntry("experts"),  # a Ray Train fleet: cluster/training.py
    StageEntry("merge"),  # one actor: alignguard/merge/stage.py
    StageEntry("evaluation", "alignguard.stages.evaluation:EvaluationStage"),
)


STAGES = tuple(entry.name for entry in REGISTRY if entry.in_pipeline)  # `alignguard pipeline`'s order


def sharded_stage(name: str, config: ExperimentConfig) -> ShardedStage:
    """The registered sharded stage ``name``, built for ``config``."""
    entry = next((e for e in REGISTRY if e.name == name), None)
    if entry is None or entry.sharded is None:
        sharded = [e.name for e in REGISTRY if e.sharded]
        raise KeyError(f"no sharded stage {name!r}; registered: {', '.join(sharded)}")
    module, _, cls = entry.sharded.partition(":")
    return getattr(importlib.import_module(module), cls)(config)
