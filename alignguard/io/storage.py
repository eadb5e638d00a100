"""Run directories on local disk or object storage, with atomic writes.

A :class:`RunDir` wraps an fsspec filesystem rooted at a local path or an ``s3://`` /
``gs://`` URI (those need the ``cloud`` extra: s3fs, gcsfs). Writes never leave a
half-written file under its final name:

- locally, bytes go to a temporary file in the same directory, are fsynced, then renamed
  over the target (``os.replace`` is atomic on POSIX);
- on object stores a single PUT is atomic (the object appears whole or not at all), and a
  stage's ``manifest.json`` is written last, so a stage without a valid manifest is never
  taken as complete (see :mod:`alignguard.io.manifest`).
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec


class StorageError(OSError):
    """A run-directory operation failed; the message names the path."""


class RunDir:
    """A directory of artifacts addressed by relative POSIX paths (``"experts/hate/x.safetensors"``)."""

    def __init__(self, uri: str | Path) -> None:
        self.uri = str(uri)
        try:
            self.fs, root = fsspec.core.url_to_fs(self.uri)
        except ImportError as exc:
            raise StorageError(
                f"{self.uri}: no filesystem driver ({exc}); "
                "install the cloud extra: pip install 'alignguard[cloud]'"
            ) from None
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.is_local = "file" in protocols or "local" in protocols
        self.root = os.path.abspath(root) if self.is_local else root.rstrip("/")

    def __repr__(self) -> str:
        return f"RunDir({self.uri!r})"

    def path(self, *parts: str) -> str:
        """The absolute path (or bucket key) of a relative path inside this run directory."""
        rel = posixpath.join(*parts) if parts else ""
        if rel.startswith("/") or ".." in rel.split("/"):
            raise StorageError(f"{rel!r} escapes the run directory {self.uri}")
        return posixpath.join(self.root, rel) if rel else self.root

    def url(self, *parts: str) -> str:
        """A URI for a relative path that other processes (and fsspec) can open."""
        path = self.path(*parts)
        if self.is_local:
            return path
        protocol = self.fs.protocol[0] if isinstance(self.fs.protocol, tuple) else self.fs.protocol
        return f"{protocol}://{path.lstrip('/')}"

    def sub(self, *parts: str) -> RunDir:
        """A run directory rooted at a subdirectory."""
        return RunDir(self.url(*parts))

    def exists(self, *parts: str) -> bool:
        return self.fs.exists(self.path(*parts))

    def size(self, *parts: str) -> int:
        return int(self.fs.size(self.path(*parts)))

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly under a relative directory; empty if it does not exist."""
        target = self.path(*parts)
        if not self.fs.exists(target):
            return []
        return sorted(posixpath.basename(entry.rstrip("/")) for entry in self.fs.ls(target, detail=False))

    def read_bytes(self, *parts: str) -> bytes:
        try:
            return self.fs.cat_file(self.path(*parts))
        except FileNotFoundError:
            raise StorageError(f"not found: {self.url(*parts)}") from None

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode("utf-8")

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def write_bytes(self, rel: str, data: bytes) -> str:
        """Atomically write ``data`` to ``rel``; returns the final path."""
        target = self.path(rel)
        try:
            if self.is_local:
                _atomic_local_write(target, data)
            else:
                self.fs.pipe_file(target, data)
        except OSError as exc:
            raise StorageError(f"could not write {self.url(rel)}: {exc}") from exc
        return target

    def write_text(self, rel: str, text: str) -> str:
        return self.write_bytes(rel, text.encode("utf-8"))

    def write_json(self, rel: str, obj: Any) -> str:
        return self.write_text(rel, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

    def put_file(self, local_path: str | Path, rel: str) -> str:
        """Atomically copy a local file into the run directory."""
        target = self.path(rel)
        try:
            if self.is_local:
                with open(local_path, "rb") as handle:
                    _atomic_local_write(target, handle.read())
            else:
                self.fs.put_file(str(local_path), target)
        except OSError as exc:
            raise StorageError(f"could not copy {local_path} to {self.url(rel)}: {exc}") from exc
        return target

    def remove(self, rel: str, recursive: bool = False) -> None:
        target = self.path(rel)
        if self.fs.exists(target):
            self.fs.rm(target, recursive=recursive)

    @contextlib.contextmanager
    def local_copy_dir(self, rel: str) -> Iterator[str]:
        """A local directory mirroring ``rel``: the directory itself when local, else a
        temporary download (read-only use)."""
        if self.is_local:
            yield self.path(rel)
            return
        with tempfile.TemporaryDirectory() as tmp:
            self.fs.get(self.path(rel), tmp, recursive=True)
            yield tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; a run directory is shared (Serve replicas, other users): give the
# file the mode a plain open() would, 0666 minus the process umask.
_FILE_MODE = 0o666 & ~_umask()


def _atomic_local_write(target: str, data: bytes) -> None:
    directory = os.path.dirname(target) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix="-" + os.path.basename(target))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
