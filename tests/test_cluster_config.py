"""ray_cluster.yaml validated offline with Ray's own preparation and schema, plus our fit checks."""

from __future__ import annotations

import copy

import pytest
import ray

from alignguard.config import load_config
from cluster.launcher import (
    ClusterConfigError,
    load_cluster_config,
    node_types,
    placement_problems,
    validate_cluster_config,
)
from jobs.cli import main


@pytest.fixture(scope="module")
def raw(repo) -> dict:
    return load_cluster_config(repo / "ray_cluster.yaml")


def test_cluster_config_is_valid_and_shaped_as_designed(raw):
    prepared = validate_cluster_config(raw)
    types = {t.name: t for t in node_types(prepared)}
    head = types[prepared["head_node_type"]]
    assert head.gpus == 0 and head.max_nodes == 1  # a CPU head
    workers = [t for t in types.values() if t is not head]
    assert sorted(t.gpus for t in workers) == [1, 8]  # one 1-GPU type, one multi-GPU type
    for name, node in prepared["available_node_types"].items():
        assert {"CPU", "GPU"} <= set(node["resources"]), name  # stated, not auto-detected
        if name != prepared["head_node_type"]:
            assert node["min_workers"] == 0 < node["max_workers"], name  # scale from zero
    assert prepared["docker"]["image"].rsplit(":", 1)[-1] == "0.1.0"
    # Shared storage: EFS mounted on the host and passed into the container.
    assert any("mount -t nfs4" in command for command in prepared["initialization_commands"])
    assert "--volume /mnt/efs:/mnt/efs" in prepared["docker"]["run_options"]
    # Setup runs everywhere and pins the image's Ray to the one this project is tested with.
    assert any(f"'{ray.__version__}'" in command for command in prepared["worker_setup_commands"])
    assert any("RAY_AUTH_MODE=token" in option for option in prepared["docker"]["run_options"])


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda c: c["available_node_types"]["gpu-1x"].update(min_wrokers=1), "min_wrokers"),
        (lambda c: c.update(max_wrokers=4), "max_wrokers"),
        (lambda c: c.update(head_node_type="head-typo"), "head_node_type"),
        (lambda c: c["available_node_types"]["gpu-8x"].update(min_workers=19), "max_workers"),
        (lambda c: c["available_node_types"]["gpu-1x"]["resources"].update(GPU=0.5), "GPU"),
        (lambda c: c["available_node_types"]["gpu-1x"]["resources"].pop("GPU"), "state GPU"),
        (lambda c: c["available_node_types"]["gpu-8x"].update(min_workers=3), "exceeds max_workers"),
        (lambda c: c["available_node_types"]["head"].update(max_workers=2), "must not scale"),
        (lambda c: c["docker"].pop("image"), "image name"),
        (lambda c: c["docker"].update(imgae="x"), "imgae"),
        (lambda c: c.pop("docker"), "docker.image"),
    ],
    ids=[
        "typo-min_wrokers",
        "typo-top-level",
        "bad-head-type",
        "min-sum-over-global-max",
        "fractional-resource",
        "resources-not-stated",
        "min-over-max",
        "scaling-head",
        "no-image",
        "typo-docker",
        "no-docker",
    ],
)
def test_broken_cluster_configs_are_rejected(raw, edit, expected):
    broken = copy.deepcopy(raw)
    edit(broken)
    with pytest.raises(ClusterConfigError, match=expected):
        validate_cluster_config(broken)


@pytest.mark.parametrize("name", ["sd15", "sd21", "sdxl", "toy"])
def test_every_stage_of_our_configs_fits_the_cluster(raw, repo, name):
    prepared = validate_cluster_config(raw)
    assert placement_problems(prepared, load_config(repo / "configs" / f"{name}.yaml")) == []


def test_a_stage_no_node_can_host_is_reported(raw, repo):
    prepared = validate_cluster_config(raw)
    config = load_config(
        repo / "configs" / "sd15.yaml",
        ["resources.evaluation.num_cpus=200", "resources.training.concurrency=40"],
    )
    problems = placement_problems(prepared, config)
    assert len(problems) == 2, problems
    # 16 gpu-1x nodes x 1 worker + 2 gpu-8x nodes x 8 workers (8 CPU + 1 GPU each) = 32.
    assert problems[0].startswith("resources.training: 40 workers") and "at most 32" in problems[0]
    assert problems[1].startswith("resources.evaluation: 200 CPU + 1 GPU per actor fits no node type")


def test_cluster_check_cli(repo, capsys, monkeypatch):
    monkeypatch.chdir(repo)
    assert main(["cluster", "check", "--config", "configs/sd15.yaml", "--config", "configs/sdxl.yaml"]) == 0
    out = capsys.readouterr().out
    assert "gpu-8x" in out and "ray_cluster.yaml: valid; every stage" in out
    assert main(["cluster", "check", "--config", "configs/missing.yaml"]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_cluster_check_cli_reports_typos(repo, tmp_path, capsys):
    original = (repo / "ray_cluster.yaml").read_text()
    text = original.replace("min_workers: 0\n    max_workers: 16", "min_wrokers: 0")
    assert "min_wrokers" in text
    (tmp_path / "c.yaml").write_text(text)
    assert main(["cluster", "check", str(tmp_path / "c.yaml")]) == 2
    assert "min_wrokers" in capsys.readouterr().err
