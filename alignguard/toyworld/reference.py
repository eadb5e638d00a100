"""The reference run shipped with the package: a toy-world pipeline's 7 experts and merged LoRA.

The files live in the data-only package ``alignguard_assets`` (package data, so an installed
wheel has them too), not among the core modules.

Serving and guard tests (and anyone who wants to call the guarded service before training) use
it as a trained run directory: ``serve --config configs/toy.yaml run.output_dir=<REFERENCE_RUN>``.
It is published from a finished run with ``python -m alignguard.toyworld.reference RUN_DIR``,
which copies ``experts/<category>/`` and ``merged/`` only after their manifests verify.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import alignguard_assets
from alignguard.data.taxonomy import CATEGORIES
from alignguard.io import RunDir, stage_status

REFERENCE_RUN = Path(alignguard_assets.__file__).resolve().parent / "reference_run"
STAGES = (*(f"experts/{category}" for category in CATEGORIES), "merged")


def publish_reference(run_dir: str | Path, target: Path = REFERENCE_RUN) -> list[str]:
    """Copy the verified expert and merge stages of ``run_dir`` to ``target`` (replacing it)."""
    run = RunDir(str(run_dir))
    for stage in STAGES:
        status = stage_status(run.sub(stage))
        if not status.complete:
            raise ValueError(f"{stage} of {run_dir} is not complete: {status}")
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    for stage in STAGES:
        shutil.copytree(Path(run_dir) / stage, staging / stage)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return list(STAGES)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m alignguard.toyworld.reference RUN_DIR")
    print("\n".join(publish_reference(sys.argv[1])))
