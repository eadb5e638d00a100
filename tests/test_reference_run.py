"""The shipped reference run: package data outside the core modules, complete, and republishable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import alignguard
from alignguard.io import RunDir, stage_status
from alignguard.toyworld.reference import REFERENCE_RUN, STAGES, publish_reference


def test_reference_run_lives_outside_the_core_package():
    core = Path(alignguard.__file__).resolve().parent
    assert REFERENCE_RUN.is_dir()
    assert core not in REFERENCE_RUN.resolve().parents
    assert REFERENCE_RUN.parent.name == "alignguard_assets"


def test_every_stage_of_the_reference_run_verifies():
    run = RunDir(str(REFERENCE_RUN))
    for stage in STAGES:
        assert stage_status(run.sub(stage), verify_hashes=True).complete, stage


def test_publish_copies_the_verified_stages(tmp_path):
    target = tmp_path / "reference_run"
    assert publish_reference(REFERENCE_RUN, target) == list(STAGES)
    for stage in STAGES:
        assert stage_status(RunDir(str(target)).sub(stage), verify_hashes=True).complete, stage


def test_publish_command_refuses_an_incomplete_run(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "alignguard.toyworld.reference", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0 and "is not complete" in result.stderr
