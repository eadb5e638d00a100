"""What a stage's identity is made of: the config sections that decide its outputs."""

from __future__ import annotations

import hashlib
import json

from alignguard.config.schema import ExperimentConfig

SYNTHESIS_SECTIONS = ("model", "data", "synthesis")
TRAINING_SECTIONS = ("model", "data", "synthesis", "training")


class StageConflictError(RuntimeError):
    """A stage directory holds outputs of a different config; nothing is overwritten silently."""


def stage_config(config: ExperimentConfig, sections: tuple[str, ...] = SYNTHESIS_SECTIONS) -> dict:
    """The part of the config a stage depends on (plus the run seed)."""
    dumped = config.model_dump(mode="json")
    return {"run.seed": config.run.seed, **{name: dumped[name] for name in sections}}


def config_digest(stage: dict) -> str:
    """sha256 of a stage's config, canonical JSON (key order and spacing do not matter)."""
    canonical = json.dumps(stage, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def stage_config_hash(config: ExperimentConfig, sections: tuple[str, ...] = SYNTHESIS_SECTIONS) -> str:
    return config_digest(stage_config(config, sections))


def expert_stage_config(config: ExperimentConfig) -> dict:
    """What one expert depends on: the training sections without ``training.experts`` (which
    experts to train), so adding ``all_single`` to a finished fleet does not retrain it."""
    stage = stage_config(config, TRAINING_SECTIONS)
    stage["training"].pop("experts")
    return stage


def expert_config_hash(config: ExperimentConfig) -> str:
    return config_digest(expert_stage_config(config))
