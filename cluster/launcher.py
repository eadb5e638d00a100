"""Offline checks of a cluster launcher config (``ray_cluster.yaml``) and of an experiment's fit on it.

There is no ``ray up --dry-run``. :func:`validate_cluster_config` runs Ray's own preparation
(``prepare_config``: merge with the provider's defaults, setup commands, docker, per-type worker
bounds) and validation (``validate_config``: the JSON schema, which rejects unknown keys such as
``min_wrokers``, a head type that is not a node type, min_workers summing past max_workers) without
any cloud call, then the rules Ray leaves out. :func:`placement_problems` checks that every stage
of an experiment config asks for an actor some node type can hold: Ray waits forever (with only a
warning) for an actor no node can host.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alignguard.config import ConfigError
from alignguard.config.schema import ExperimentConfig


class ClusterConfigError(ConfigError):
    """A cluster launcher config that ``ray up`` would reject or that cannot run our stages."""


@dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float
    gpus: float
    max_nodes: int  # 1 for the head; max_workers for worker types


def load_cluster_config(path: str | Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ClusterConfigError(f"{path}: expected a mapping at the top level")
    return raw


def validate_cluster_config(raw: dict[str, Any]) -> dict[str, Any]:
    """Ray's preparation and schema validation plus our rules; returns the prepared config."""
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(part) for part in exc.absolute_path) or "(top level)"
        raise ClusterConfigError(f"Ray's cluster schema rejects {where}: {exc.message}") from exc
    except (ValueError, KeyError, AssertionError) as exc:
        raise ClusterConfigError(f"Ray rejects the cluster config: {exc}") from exc
    problems = _our_rules(prepared)
    if problems:
        raise ClusterConfigError("cluster config:\n  " + "\n  ".join(problems))
    return prepared


def _our_rules(prepared: dict[str, Any]) -> list[str]:
    problems = []
    for name, node in prepared["available_node_types"].items():
        resources = node.get("resources", {})
        missing = [key for key in ("CPU", "GPU") if key not in resources]
        if missing:
            problems.append(
                f"available_node_types.{name}.resources: state {' and '.join(missing)} explicitly "
                "(not every provider detects them; the fit check needs them)"
            )
        if node["min_workers"] > node["max_workers"]:
            problems.append(
                f"available_node_types.{name}: min_workers ({node['min_workers']}) exceeds "
                f"max_workers ({node['max_workers']})"
            )
    head = prepared["available_node_types"][prepared["head_node_type"]]
    if head["max_workers"] != 0:
        problems.append(f"the head type {prepared['head_node_type']!r} must not scale (max_workers: 0)")
    if not (prepared.get("docker") or {}).get("image"):
        problems.append("docker.image: every node must run the project image (cluster/image/Dockerfile)")
    if not any(t.gpus > 0 for t in node_types(prepared)):
        problems.append("no node type offers a GPU")
    return problems


def node_types(prepared: dict[str, Any]) -> list[NodeType]:
    """Every node type with its resources; the head counts once, workers up to their max."""
    cap = prepared["max_workers"]
    found = []
    for name, node in prepared["available_node_types"].items():
        resources = node.get("resources", {})
        count = 1 if name == prepared["head_node_type"] else min(node["max_workers"], cap)
        found.append(NodeType(name, resources.get("CPU", 0), resources.get("GPU", 0), count))
    return found


def _demands(config: ExperimentConfig) -> list[tuple[str, float, float, int]]:
    """(what, CPUs, GPUs, how many must run at once) for every actor kind the stages start."""
    r = config.resources
    demands = []
    if config.data.source == "llm":
        demands.append(("resources.prompts", r.prompts.num_cpus, r.prompts.num_gpus, 1))
    demands += [
        ("resources.synthesis", r.synthesis.num_cpus, r.synthesis.num_gpus, 1),
        ("synthesis.writer_cpus", config.synthesis.writer_cpus, 0.0, 1),
        # An expert's data-parallel workers must all be placed before any starts.
        ("resources.training", r.training.num_cpus, r.training.num_gpus, r.training.concurrency),
        ("resources.merge", r.merge.num_cpus, r.merge.num_gpus, 1),
        ("resources.evaluation", r.evaluation.num_cpus, r.evaluation.num_gpus, 1),
        ("resources.serve", r.serve.num_cpus, r.serve.num_gpus, 1),
        ("serve.ingress.num_cpus", config.serve.ingress.num_cpus, 0.0, 1),
    ]
    return demands


def placement_problems(prepared: dict[str, Any], config: ExperimentConfig) -> list[str]:
    """Stages of ``config`` that could never be placed on this cluster (each would hang)."""
    types = node_types(prepared)
    problems = []
    for what, cpus, gpus, group in _demands(config):
        hosts = [t for t in types if t.cpus >= cpus and t.gpus >= gpus and t.max_nodes > 0]
        asked = f"{cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
        if not hosts:
            offered = ", ".join(f"{t.name} ({t.cpus:g} CPU, {t.gpus:g} GPU)" for t in types)
            problems.append(f"{what}: {asked} per actor fits no node type ({offered}); it would wait forever")
            continue
        slots = sum(t.max_nodes * _per_node(t, cpus, gpus) for t in hosts)
        if slots < group:
            problems.append(
                f"{what}: {group} workers of {asked} must run together; the cluster holds at most {slots}"
            )
    return problems


def _per_node(node: NodeType, cpus: float, gpus: float) -> int:
    by_cpu = int(node.cpus // cpus) if cpus else 10**6
    by_gpu = int(node.gpus // gpus) if gpus else 10**6
    return min(by_cpu, by_gpu)
