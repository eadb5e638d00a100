"""Artifacts: run directories (local or object store), atomic writes, manifests, safetensors."""

from alignguard.io.manifest import (
    MANIFEST_NAME,
    Manifest,
    StageStatus,
    Timings,
    describe_outputs,
    git_sha,
    package_versions,
    read_manifest,
    sha256_bytes,
    sha256_file,
    stage_status,
    write_manifest,
)
from alignguard.io.storage import RunDir, StorageError


def __getattr__(name: str):
    # The safetensors helpers need torch: import them on first use, so light workers (image
    # writers) that only need run directories and manifests start without loading torch.
    if name in ("load_tensors", "save_tensors"):
        from alignguard.io import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'alignguard.io' has no attribute {name!r}")


__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "RunDir",
    "StageStatus",
    "StorageError",
    "Timings",
    "describe_outputs",
    "git_sha",
    "load_tensors",
    "package_versions",
    "read_manifest",
    "save_tensors",
    "sha256_bytes",
    "sha256_file",
    "stage_status",
    "write_manifest",
]
