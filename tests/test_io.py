from __future__ import annotations

import os
import uuid

import pytest
import torch

from alignguard.io import (
    Manifest,
    RunDir,
    StorageError,
    Timings,
    describe_outputs,
    load_tensors,
    read_manifest,
    save_tensors,
    stage_status,
    write_manifest,
)


@pytest.fixture(params=["local", "object_store"])
def run_dir(request, tmp_path):
    """The same tests on a local directory and on fsspec's in-memory object store (a real
    non-local filesystem with the bucket semantics of s3/gs: no rename, whole-object writes)."""
    if request.param == "local":
        return RunDir(tmp_path / "run")
    return RunDir(f"memory://bucket-{uuid.uuid4().hex}/run")


def test_write_read_roundtrip(run_dir):
    run_dir.write_json("stage/meta.json", {"a": 1})
    run_dir.write_text("stage/notes.txt", "hello")
    assert run_dir.read_json("stage/meta.json") == {"a": 1}
    assert run_dir.listdir("stage") == ["meta.json", "notes.txt"]
    assert run_dir.sub("stage").read_text("notes.txt") == "hello"
    assert run_dir.listdir("nothing") == []
    with pytest.raises(StorageError, match="not found"):
        run_dir.read_bytes("stage/absent.bin")
    with pytest.raises(StorageError, match="escapes"):
        run_dir.path("../outside")


def test_local_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    run_dir = RunDir(tmp_path)
    run_dir.write_text("lora.safetensors", "old complete content")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(StorageError, match="No space left"):
        run_dir.write_text("lora.safetensors", "new content that never lands")
    assert run_dir.read_text("lora.safetensors") == "old complete content"
    assert sorted(os.listdir(tmp_path)) == ["lora.safetensors"]  # the temp file was cleaned up


def test_safetensors_roundtrip(run_dir):
    tensors = {"down.weight": torch.randn(4, 8), "up.weight": torch.randn(8, 4).T}  # non-contiguous
    save_tensors(run_dir, "w/lora.safetensors", tensors, metadata={"rank": "4"})
    loaded = load_tensors(run_dir, "w/lora.safetensors")
    assert loaded.keys() == tensors.keys()
    for name in tensors:
        assert torch.equal(loaded[name], tensors[name])


def _complete_stage(run_dir: RunDir, config_hash: str = "cfg1") -> RunDir:
    stage = run_dir.sub("experts")
    stage.write_bytes("hate/weights.bin", b"x" * 100)
    stage.write_json("hate/metrics.json", {"loss": 0.1})
    timings = Timings()
    with timings.measure("train"):
        pass
    write_manifest(
        stage,
        Manifest(
            stage="experts",
            config={"training": {"steps": 3}},
            config_hash=config_hash,
            outputs=describe_outputs(stage, ["hate/weights.bin", "hate/metrics.json"]),
            seeds={"run": 0},
            timings=timings.seconds,
        ),
    )
    return stage


def test_manifest_marks_a_stage_complete(run_dir):
    stage = run_dir.sub("experts")
    assert stage_status(stage).state == "missing"
    stage = _complete_stage(run_dir)
    assert stage_status(stage, config_hash="cfg1").complete
    manifest = read_manifest(stage)
    assert manifest["outputs"]["hate/weights.bin"]["bytes"] == 100
    assert {"torch", "diffusers", "python"} <= manifest["versions"].keys()
    assert manifest["git_sha"] and "train" in manifest["timings"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda s: s.write_bytes("hate/weights.bin", b"x" * 50), "has 50 bytes"),
        (lambda s: s.write_bytes("hate/weights.bin", b"y" * 100), "does not match its sha256"),
        (lambda s: s.remove("hate/metrics.json"), "hate/metrics.json is missing"),
        (lambda s: s.write_text("manifest.json", "{truncated"), "does not parse"),
    ],
)
def test_damaged_stages_are_invalid_with_a_reason(run_dir, damage, reason):
    stage = _complete_stage(run_dir)
    damage(stage)
    status = stage_status(stage)
    assert status.state == "invalid"
    assert any(reason in r for r in status.reasons), status.reasons


def test_a_manifest_for_another_config_is_not_complete(run_dir):
    stage = _complete_stage(run_dir, config_hash="cfg1")
    status = stage_status(stage, config_hash="cfg2")
    assert status.state == "invalid" and "different config" in status.reasons[0]


def test_missing_cloud_driver_is_a_clear_error():
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401

        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with pytest.raises(StorageError, match=r"alignguard\[cloud\]"):
        RunDir("gs://bucket/run")


def test_atomic_writes_get_the_mode_a_plain_open_would(tmp_path):
    import os

    from alignguard.io import RunDir

    RunDir(str(tmp_path)).write_bytes("a/b.bin", b"x")
    (tmp_path / "plain.bin").write_bytes(b"x")
    assert os.stat(tmp_path / "a/b.bin").st_mode & 0o777 == os.stat(tmp_path / "plain.bin").st_mode & 0o777
