"""Offline checks of the KubeRay manifests in ``cluster/kuberay/`` (RayJob, RayService).

A manifest is only a promise that the image can run what it names. These helpers read the image
recipe (where the repository lives inside the image), a manifest's Ray cluster (groups, CPUs,
GPUs) in the shape :func:`cluster.launcher.placement_problems` checks, and, when the KubeRay CRDs
are at hand, validate a manifest against the CRD's own schema with unknown fields refused (the API
server would silently drop them).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from cluster.launcher import ClusterConfigError

REPO_ROOT = Path(__file__).resolve().parent.parent
KUBERAY_DIR = REPO_ROOT / "cluster" / "kuberay"
DOCKERFILE = REPO_ROOT / "cluster" / "image" / "Dockerfile"
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")


def load_manifest(path: str | Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(doc, dict) or "kind" not in doc:
        raise ClusterConfigError(f"{path}: expected one Kubernetes object with a kind")
    return doc


def image_workdir(dockerfile: Path = DOCKERFILE) -> str:
    """The last ``WORKDIR`` of the image recipe: where the repository is copied."""
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", dockerfile.read_text(), flags=re.M)
    if not workdirs:
        raise ClusterConfigError(f"{dockerfile}: no WORKDIR")
    return workdirs[-1]


def base_image(dockerfile: Path = DOCKERFILE) -> str:
    found = re.findall(r"^FROM\s+(\S+)", dockerfile.read_text(), flags=re.M)
    if len(found) != 1:
        raise ClusterConfigError(f"{dockerfile}: expected one FROM line, found {found}")
    return found[0]


def ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayCluster spec of a RayJob (``rayClusterSpec``) or a RayService (``rayClusterConfig``)."""
    key = {"RayJob": "rayClusterSpec", "RayService": "rayClusterConfig"}.get(doc["kind"])
    if key is None or key not in doc.get("spec", {}):
        raise ClusterConfigError(f"{doc['kind']} {doc['metadata']['name']}: no Ray cluster spec")
    return doc["spec"][key]


def _pod_containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for group in groups for c in _pod_containers(group)]


def quantity(value: str | int | float) -> float:
    """A Kubernetes CPU/GPU quantity ("8", "500m", 2) as a number."""
    match = _QUANTITY.match(str(value))
    if not match:
        raise ClusterConfigError(f"unsupported quantity {value!r}")
    return float(match.group(1)) / (1000 if match.group(2) else 1)


def _group_resources(group: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) Ray sees in one pod: rayStartParams win, else the Ray container's limits."""
    params = group.get("rayStartParams") or {}
    limits = _pod_containers(group)[0].get("resources", {}).get("limits", {})
    cpus = quantity(params.get("num-cpus", limits.get("cpu", 0)))
    gpus = quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return cpus, gpus


def as_launcher_config(spec: dict[str, Any]) -> dict[str, Any]:
    """The cluster in the prepared launcher shape :func:`cluster.launcher.placement_problems` reads."""
    cpus, gpus = _group_resources(spec["headGroupSpec"])
    types = {"head": {"resources": {"CPU": cpus, "GPU": gpus}, "max_workers": 0}}
    for group in spec.get("workerGroupSpecs", []):
        cpus, gpus = _group_resources(group)
        resources = {"CPU": cpus, "GPU": gpus}
        types[group["groupName"]] = {"resources": resources, "max_workers": group["maxReplicas"]}
    total = sum(t["max_workers"] for t in types.values())
    return {"head_node_type": "head", "max_workers": total, "available_node_types": types}


def crd_problems(doc: dict[str, Any], crd_path: str | Path) -> list[str]:
    """Where ``doc`` breaks its CRD's ``v1`` schema, unknown fields included."""
    import jsonschema

    crd = yaml.safe_load(Path(crd_path).read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == doc["apiVersion"].split("/")[-1])
    schema = _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in jsonschema.Draft7Validator(schema).iter_errors(doc)
    ]


def _closed(schema: Any) -> Any:
    """Refuse properties a structural schema does not name (Kubernetes would prune them silently)."""
    if isinstance(schema, dict):
        open_ended = schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema
        if schema.get("type") == "object" and "properties" in schema and not open_ended:
            schema["additionalProperties"] = False
        for value in schema.values():
            _closed(value)
    elif isinstance(schema, list):
        for value in schema:
            _closed(value)
    return schema
