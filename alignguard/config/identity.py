"""A stage's identity: the config sections that decide its outputs, and the one hash of them.

Every stage (prompts, synthesis, experts, merge, evaluation and their shards) hashes its identity
with :func:`identity_hash`, so "which change invalidates what" is decided in one place and a rerun
with the same identity resumes instead of redoing work. It lives with the config, below every
stage package, so any of them can use it without importing another (``alignguard.stages`` claims
directories with it: :func:`alignguard.stages.claim_directory`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from alignguard.config.schema import ExperimentConfig

SYNTHESIS_SECTIONS = ("model", "data", "synthesis")
TRAINING_SECTIONS = ("model", "data", "synthesis", "training")

_COMPACT = (",", ":")
_SPACED = (", ", ": ")  # json.dumps' default


def identity_hash(identity: Mapping[str, Any] | Sequence[Any], spaced: bool = False) -> str:
    """sha256 of canonical JSON (sorted keys): key order never changes a hash, a value always does.

    ``spaced`` keeps json.dumps' default ``", "`` / ``": "`` separators, which the merge and
    evaluation keys were first written with: existing run directories (and the shipped reference
    run) carry those values in their manifests and shard markers, so they must not change.
    """
    canonical = json.dumps(identity, sort_keys=True, separators=_SPACED if spaced else _COMPACT)
    return hashlib.sha256(canonical.encode()).hexdigest()


def section_config(config: ExperimentConfig, sections: Sequence[str] = SYNTHESIS_SECTIONS) -> dict:
    """The part of the config a stage depends on: the named sections plus the run seed."""
    dumped = config.model_dump(mode="json")
    return {"run.seed": config.run.seed, **{name: dumped[name] for name in sections}}


def sections_hash(config: ExperimentConfig, sections: Sequence[str] = SYNTHESIS_SECTIONS) -> str:
    return identity_hash(section_config(config, sections))


def expert_stage_config(config: ExperimentConfig) -> dict:
    """What one expert depends on: the training sections without ``training.experts`` (which
    experts to train), so adding ``all_single`` to a finished fleet does not retrain it."""
    stage = section_config(config, TRAINING_SECTIONS)
    stage["training"].pop("experts")
    return stage


def expert_config_hash(config: ExperimentConfig) -> str:
    return identity_hash(expert_stage_config(config))
