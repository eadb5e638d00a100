"""Stages of a run in one shape: declare a stage, and any executor runs it.

- :mod:`alignguard.config.identity` (re-exported here): a stage's identity (its config sections)
  and the one hash of it, used by every stage, merge and experts included.
- :mod:`.claim`: claiming a stage directory for one identity (:class:`StageConflictError`).
- :mod:`.sharded`: :class:`ShardedStage` (plan, pending shards, worker pools, seal) and
  :func:`run_stage`, which drives any of them; :class:`LocalExecutor` runs one in this process
  (the Ray Data runner is ``cluster/stages.py``).
- :mod:`.registry`: every stage in pipeline order (``STAGES``); adding one is a line there.
- :mod:`.prompts`, :mod:`.synthesis`, :mod:`.evaluation`: the sharded stages.
"""

from alignguard.config.identity import (
    expert_config_hash,
    expert_stage_config,
    identity_hash,
    section_config,
    sections_hash,
)
from alignguard.stages.claim import StageConflictError, claim_directory
from alignguard.stages.sharded import LocalExecutor, Pool, ShardedStage, StageRun, Task, run_stage

__all__ = [
    "LocalExecutor",
    "Pool",
    "ShardedStage",
    "StageConflictError",
    "StageRun",
    "Task",
    "claim_directory",
    "expert_config_hash",
    "expert_stage_config",
    "identity_hash",
    "run_stage",
    "section_config",
    "sections_hash",
]
