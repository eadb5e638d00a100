"""KubeRay manifests: they name entrypoints, import paths and configs that exist in the image, run
the Ray the project is tested with, use the project image, and every stage fits their groups."""

from __future__ import annotations

import importlib
import os
import shlex
from pathlib import Path

import pytest
import ray
import yaml

from alignguard.config import load_config
from cluster.launcher import load_cluster_config, placement_problems
from cluster.manifests import (
    KUBERAY_DIR,
    as_launcher_config,
    containers,
    crd_problems,
    image_workdir,
    load_manifest,
    ray_cluster_spec,
)
from jobs.cli import build_parser
from serve.validate import check_serve_config

RAYJOB = KUBERAY_DIR / "rayjob-pipeline.yaml"
RAYSERVICE = KUBERAY_DIR / "rayservice.yaml"
STORAGE = KUBERAY_DIR / "storage.yaml"


def in_repo(image_path: str, repo: Path) -> Path:
    """A path inside the image's checkout, as a path of this repository."""
    workdir = image_workdir()
    assert image_path.startswith(workdir + "/"), f"{image_path} is not under the image's {workdir}"
    return repo / image_path[len(workdir) + 1 :]


def option_values(args: list[str]) -> tuple[str, list[str]]:
    """(--config value, the key=value overrides) of a job's command line."""
    config = args[args.index("--config") + 1]
    return config, [a for a in args if "=" in a and not a.startswith("-")]


def output_dir(overrides: list[str]) -> str:
    return next(o.split("=", 1)[1] for o in overrides if o.startswith("run.output_dir="))


def test_the_manifests_are_the_expected_objects():
    kinds = {path.name: load_manifest(path)["kind"] for path in sorted(KUBERAY_DIR.glob("*.yaml"))}
    assert kinds == {
        "rayjob-pipeline.yaml": "RayJob",
        "rayservice.yaml": "RayService",
        "storage.yaml": "PersistentVolumeClaim",
    }


def test_rayjob_runs_the_pipeline_job_of_the_image(repo):
    doc = load_manifest(RAYJOB)
    argv = shlex.split(doc["spec"]["entrypoint"])
    assert argv[0] == "python"
    assert in_repo(argv[1], repo) == repo / "jobs" / "pipeline.py"
    assert (repo / "jobs" / "pipeline.py").is_file()
    # The job script's own command line parses (jobs/pipeline.py prepends "pipeline").
    parsed = build_parser().parse_args(["pipeline", *argv[2:]])
    config_path, overrides = option_values(argv[2:])
    assert parsed.config == config_path
    config = load_config(in_repo(config_path, repo), overrides)  # the overrides are real keys
    mount = "/mnt/shared/"
    assert config.run.output_dir.startswith(mount) and str(config.data.path).startswith(mount)
    assert config.model.family == "sd15"


def test_rayservice_serves_the_app_builder_on_the_pipelines_output(repo, tmp_path):
    doc = load_manifest(RAYSERVICE)
    serve_config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump(serve_config))
    # Ray's ServeDeploySchema, unknown keys, our app's args (config exists, overrides load), timeouts.
    assert check_serve_config(tmp_path / "serve.yaml") == []
    (app,) = serve_config["applications"]
    module, attr = app["import_path"].split(":")
    assert app["import_path"] == "serve.app:build_app"
    assert callable(getattr(importlib.import_module(module), attr))
    assert (repo / app["args"]["config"]).is_file()
    job_args = shlex.split(load_manifest(RAYJOB)["spec"]["entrypoint"])
    assert output_dir(app["args"]["overrides"]) == output_dir(option_values(job_args)[1])
    # The key variable the config names is set in every pod from the secret.
    key_env = load_config(repo / app["args"]["config"], app["args"]["overrides"]).serve.api_key_env
    for container in containers(ray_cluster_spec(doc)):
        assert key_env in {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}


@pytest.mark.parametrize("path", [RAYJOB, RAYSERVICE], ids=lambda p: p.stem)
def test_clusters_run_the_project_image_and_ray(path, repo):
    spec = ray_cluster_spec(load_manifest(path))
    assert spec["rayVersion"] == ray.__version__
    image = load_cluster_config(repo / "ray_cluster.yaml")["docker"]["image"]
    assert {c["image"] for c in containers(spec)} == {image}
    assert spec["authOptions"]["mode"] == "token"  # Ray 2.60's job and Serve CLIs need the token
    claim = load_manifest(STORAGE)["metadata"]["name"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        volumes = {v["name"]: v for v in group["template"]["spec"]["volumes"]}
        assert volumes["shared"]["persistentVolumeClaim"]["claimName"] == claim
        for container in group["template"]["spec"]["containers"]:
            assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
    assert all(g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in spec["workerGroupSpecs"])


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_every_stage_fits_the_rayjob_cluster(repo, name):
    spec = ray_cluster_spec(load_manifest(RAYJOB))
    launcher = as_launcher_config(spec)
    assert sorted(t["resources"]["GPU"] for t in launcher["available_node_types"].values()) == [0, 1, 8]
    assert placement_problems(launcher, load_config(repo / "configs" / f"{name}.yaml")) == []
    too_wide = load_config(repo / "configs" / f"{name}.yaml", ["resources.training.concurrency=40"])
    assert placement_problems(launcher, too_wide), "a training group larger than the cluster must be reported"


def test_rayservice_scales_to_the_configs_replicas(repo):
    doc = load_manifest(RAYSERVICE)
    (app,) = yaml.safe_load(doc["spec"]["serveConfigV2"])["applications"]
    config = load_config(repo / app["args"]["config"], app["args"]["overrides"])
    launcher = as_launcher_config(ray_cluster_spec(doc))
    assert placement_problems(launcher, config) == []
    gpu_group = launcher["available_node_types"]["gpu-1x"]
    replicas_per_pod = gpu_group["resources"]["GPU"] // config.resources.serve.num_gpus
    assert gpu_group["max_workers"] * replicas_per_pod >= config.serve.autoscaling.max_replicas


@pytest.mark.skipif(not os.environ.get("KUBERAY_CRDS"), reason="set KUBERAY_CRDS=<dir of ray.io_*.yaml CRDs>")
@pytest.mark.parametrize(
    ("path", "crd"), [(RAYJOB, "ray.io_rayjobs.yaml"), (RAYSERVICE, "ray.io_rayservices.yaml")]
)
def test_manifests_match_the_kuberay_crds(path, crd):
    """KubeRay's CRDs are not vendored; point KUBERAY_CRDS at ray-operator/config/crd/bases (v1.7.0)."""
    assert crd_problems(load_manifest(path), Path(os.environ["KUBERAY_CRDS"]) / crd) == []
