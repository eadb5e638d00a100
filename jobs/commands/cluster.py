"""``alignguard cluster``: check a cluster launcher config offline; size a run in GPU-hours."""

from __future__ import annotations

import argparse

from jobs.commands._common import add_config_arguments, load_args_config, positive_int

CHECK_HELP = """\
Validate a Ray cluster launcher config without any cloud call: Ray's own preparation and JSON
schema (unknown keys such as 'min_wrokers', a head type that is not a node type, min/max worker
conflicts), our rules (CPU and GPU stated per node type, a non-scaling head, a docker image, a GPU
type), and, for each --config, that every stage's actors fit some node type (Ray would otherwise
wait forever).

  alignguard cluster check ray_cluster.yaml --config configs/sd15.yaml --config configs/sdxl.yaml
"""

SIZE_HELP = """\
Estimate TFLOP, GPU-hours and wall hours per stage of a config from FLOP counts (see
alignguard/sizing.py for what is counted and assumed). MFU is the fraction of the card's peak
actually reached: assume it (--mfu), or pass what benchmarks/gpu.py measured on one GPU
(--measured: per stage, the renderer's MFU for synthesis, calibration and evaluation, the
DeepSpeed DPO step's for training).

  alignguard cluster size --config configs/sdxl.yaml --mfu 0.3 --mfu 0.1
  alignguard cluster size --config configs/sd15.yaml --measured benchmarks/results/gpu-h200-2026-11-28.json
"""


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("cluster", help="check a cluster config offline; size a run in GPU-hours")
    actions = parser.add_subparsers(dest="cluster_command", metavar="<action>", required=True)
    check = actions.add_parser(
        "check", help="validate ray_cluster.yaml offline", description=CHECK_HELP, formatter_class=_Raw
    )
    check.add_argument("cluster_yaml", nargs="?", default="ray_cluster.yaml", metavar="CLUSTER_YAML")
    check.add_argument(
        "--config", action="append", default=[], metavar="FILE", help="experiment YAML to fit (repeatable)"
    )
    check.set_defaults(handler=run_check)
    size = actions.add_parser(
        "size", help="GPU-hours per stage of a config", description=SIZE_HELP, formatter_class=_Raw
    )
    add_config_arguments(size)
    size.add_argument("--mfu", type=_fraction, action="append", help="assumed MFU (repeatable; default 0.3)")
    size.add_argument("--peak-tflops", type=_positive, default=989.0, help="card peak (H100 bf16 dense: 989)")
    size.add_argument("--pairs", type=positive_int, help="training pairs (default: CoProV2 minus held-out)")
    size.add_argument(
        "--measured",
        metavar="JSON",
        help="a benchmarks/gpu.py --json result: add per-stage measured MFU columns",
    )
    size.set_defaults(handler=run_size)


_Raw = argparse.RawDescriptionHelpFormatter


def run_check(args: argparse.Namespace) -> int:
    from alignguard.config import ConfigError, load_config
    from cluster.launcher import load_cluster_config, node_types, placement_problems, validate_cluster_config

    prepared = validate_cluster_config(load_cluster_config(args.cluster_yaml))
    for node in node_types(prepared):
        print(f"{node.name:<10} {node.cpus:>5g} CPU {node.gpus:>3g} GPU  up to {node.max_nodes} node(s)")
    problems = [
        f"{path}: {problem}"
        for path in args.config
        for problem in placement_problems(prepared, load_config(path))
    ]
    if problems:
        raise ConfigError("stages that no node type can host:\n  " + "\n  ".join(problems))
    fitted = f"; every stage of {', '.join(args.config)} fits" if args.config else ""
    print(f"{args.cluster_yaml}: valid{fitted}")
    return 0


def run_size(args: argparse.Namespace) -> int:
    from alignguard.config import ConfigError
    from alignguard.sizing import estimate, sizing_table

    config = load_args_config(args)
    try:
        estimates = estimate(config, pairs=args.pairs)
        measured = _measured(args.measured, config.model.family) if args.measured else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(sizing_table(estimates, tuple(args.mfu or [0.3]), args.peak_tflops, measured))
    if measured is not None:
        print(f"measured MFU: {measured.card} (peak {measured.peak_tflops:g} TFLOP/s), from {args.measured}")
    return 0


def _measured(path: str, family: str):
    import json
    from pathlib import Path

    from alignguard.sizing import measured_mfu

    try:
        benchmark = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"--measured {path}: not a readable benchmarks/gpu.py JSON result ({exc})") from exc
    try:
        return measured_mfu(benchmark, family)
    except ValueError as exc:
        raise ValueError(f"--measured {path}: {exc}") from exc
