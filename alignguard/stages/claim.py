"""Claiming a stage directory for one identity: ``plan.json`` names it, written before any shard.

A stage whose outputs are a function of its config sections (prompts are the exception, evaluation
keys each shard instead) claims its directory, so a rerun with a changed config is refused instead
of mixing two configs' shards in one directory.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignguard.io.storage import RunDir

PLAN_FILE = "plan.json"


class StageConflictError(RuntimeError):
    """A stage directory holds outputs of a different config; nothing is overwritten silently."""


def claim_directory(
    stage_dir: RunDir, name: str, key: str, sections: Sequence[str], extra: dict | None = None
) -> None:
    """Write ``plan.json`` naming the identity the directory is for, or refuse (with
    :class:`StageConflictError`) a directory written for another one: two configs never mix outputs."""
    if stage_dir.exists(PLAN_FILE):
        if stage_dir.read_json(PLAN_FILE).get("config_hash") != key:
            changed = ", ".join(sections) + " or run.seed"
            raise StageConflictError(
                f"{stage_dir.uri} holds {name} outputs of a different config ({changed} changed). "
                "Use a new run.output_dir, or delete that directory to start over."
            )
    else:
        stage_dir.write_json(PLAN_FILE, {"config_hash": key, **(extra or {})})
