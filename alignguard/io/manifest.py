"""Per-stage manifests: what a stage produced, from what, with which code and config.

``<run>/<stage>/manifest.json`` is written last, after every output. It lists each output
with its size and sha256, so :func:`stage_status` can tell a complete stage from a partial
one (a crash before the manifest, a truncated file, a file deleted by hand) and a rerun
neither redoes finished work nor trusts half-written work.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from alignguard.io.storage import RunDir

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_TRACKED_PACKAGES = (
    "alignguard",
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "safetensors",
    "ray",
    "deepspeed",
)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def git_sha(repo_dir: str | Path | None = None) -> str:
    """The checkout's commit (``-dirty`` when modified), ``$ALIGNGUARD_GIT_SHA`` on clusters whose
    working dir carries no ``.git``, else ``"unknown"``."""
    if env := os.environ.get("ALIGNGUARD_GIT_SHA"):
        return env
    cwd = str(repo_dir or Path(__file__).resolve().parents[2])
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def package_versions(names: Iterable[str] = _TRACKED_PACKAGES) -> dict[str, str]:
    """Installed versions, read from package metadata (imports nothing)."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


@dataclass
class Timings:
    """Named wall-clock timings of a stage, in seconds."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class Manifest:
    stage: str
    config: Mapping[str, Any]
    config_hash: str
    outputs: dict[str, dict[str, Any]]
    inputs: dict[str, str] = field(default_factory=dict)
    seeds: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    git_sha: str = field(default_factory=git_sha)
    versions: dict[str, str] = field(default_factory=package_versions)
    created_at: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    manifest_version: int = MANIFEST_VERSION


def describe_outputs(stage_dir: RunDir, rel_paths: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of each output (paths relative to the stage directory)."""
    described = {}
    for rel in sorted(rel_paths):
        data = stage_dir.read_bytes(rel)
        described[rel] = {"bytes": len(data), "sha256": sha256_bytes(data)}
    return described


def write_manifest(stage_dir: RunDir, manifest: Manifest) -> None:
    """Write the manifest last: its presence marks the stage complete."""
    stage_dir.write_json(MANIFEST_NAME, asdict(manifest))


def read_manifest(stage_dir: RunDir) -> dict[str, Any] | None:
    if not stage_dir.exists(MANIFEST_NAME):
        return None
    return stage_dir.read_json(MANIFEST_NAME)


@dataclass(frozen=True)
class StageStatus:
    state: Literal["missing", "complete", "invalid"]
    reasons: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return self.state == "complete"


def stage_status(
    stage_dir: RunDir, config_hash: str | None = None, verify_hashes: bool = True
) -> StageStatus:
    """Whether a stage's outputs are complete and valid per its manifest.

    ``invalid`` (with reasons) means something is there but cannot be trusted: a missing or
    resized output, a hash mismatch, or a manifest written for a different config.
    """
    try:
        manifest = read_manifest(stage_dir)
    except ValueError as exc:  # a corrupt manifest: JSON that does not parse
        return StageStatus("invalid", (f"manifest.json does not parse: {exc}",))
    if manifest is None:
        return StageStatus("missing")
    reasons = []
    if config_hash is not None and manifest.get("config_hash") != config_hash:
        reasons.append("the manifest was written for a different config")
    for rel, meta in manifest.get("outputs", {}).items():
        if not stage_dir.exists(rel):
            reasons.append(f"output {rel} is missing")
        elif stage_dir.size(rel) != meta["bytes"]:
            reasons.append(f"output {rel} has {stage_dir.size(rel)} bytes, the manifest says {meta['bytes']}")
        elif verify_hashes and sha256_bytes(stage_dir.read_bytes(rel)) != meta["sha256"]:
            reasons.append(f"output {rel} does not match its sha256")
    return StageStatus("invalid", tuple(reasons)) if reasons else StageStatus("complete")
