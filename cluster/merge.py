"""The merge actor: one Ray actor (a GPU worker in production) runs the whole merge stage.

The experts are small, but Co-Merge's calibration runs the UNet once per expert over the
calibration set, which wants the GPU: ``resources.merge`` (``num_gpus``, ``num_cpus``) places the
actor. :class:`MergeActor` is a plain class; :func:`run_merge` wraps it with ``ray.remote`` here, at
the edge. The stage is idempotent (atomic writes, manifest last), so a killed worker is safely
restarted and its task retried (``max_restarts`` / ``max_task_retries``).
"""

from __future__ import annotations

import os
from typing import Any

import ray

from alignguard.config.schema import ExperimentConfig
from cluster.runtime import init_ray


class MergeActor:
    """Runs :func:`alignguard.merge.stage.run_merge_stage` where Ray placed it."""

    def __init__(self, torch_threads: int | None = None) -> None:
        import torch

        threads = torch_threads or int(os.environ.get("OMP_NUM_THREADS", "0") or 0)
        if threads > 0:
            torch.set_num_threads(threads)

    def device(self) -> str:
        import torch

        return f"cuda ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "cpu"

    def run(self, config: dict[str, Any], force: bool = False) -> dict[str, Any]:
        from alignguard.merge.stage import run_merge_stage

        return run_merge_stage(ExperimentConfig.model_validate(config), force=force)


def run_merge(config: ExperimentConfig, force: bool = False) -> dict[str, Any]:
    """Check the inputs here (cheap, before claiming a GPU), then merge in a Ray actor."""
    from alignguard.io import RunDir
    from alignguard.merge.stage import preflight

    preflight(RunDir(config.run.output_dir), config)
    init_ray()
    resources = config.resources.merge
    actor = (
        ray.remote(MergeActor)
        .options(
            num_cpus=resources.num_cpus,
            num_gpus=resources.num_gpus,
            max_restarts=1,
            max_task_retries=1,
        )
        .remote()
    )
    try:
        print(f"merge actor on {ray.get(actor.device.remote())}")
        return ray.get(actor.run.remote(config.model_dump(mode="json"), force))
    finally:
        ray.kill(actor)
