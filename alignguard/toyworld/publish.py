"""Building the toy model into place without ever leaving a half-written model directory."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from alignguard.io.manifest import git_sha, package_versions
from alignguard.toyworld.builder import BuildSchedule, build_toy_model

BUILD_RECORD = "build.json"


def build_and_publish(out_dir: str | Path, schedule: BuildSchedule) -> dict:
    """Train into a staging directory beside ``out_dir``, record how, then swap it into place.

    A crash mid-build leaves the previous model untouched (and a ``.building`` directory that the
    next build replaces).
    """
    out = Path(out_dir).resolve()
    staging = out.with_name(f".{out.name}.building")
    shutil.rmtree(staging, ignore_errors=True)
    figures = build_toy_model(staging, schedule)
    record = {
        "schedule": dataclasses.asdict(schedule),
        "figures": figures,
        "git_sha": git_sha(),
        "versions": package_versions(),
    }
    (staging / BUILD_RECORD).write_text(json.dumps(record, indent=2) + "\n")
    retired = out.with_name(f".{out.name}.previous")
    shutil.rmtree(retired, ignore_errors=True)
    if out.exists():
        os.replace(out, retired)
    os.replace(staging, out)
    shutil.rmtree(retired, ignore_errors=True)
    return figures
