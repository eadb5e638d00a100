"""``alignguard doctor``: check the stack here or on a cluster."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check the stack: versions, devices, Ray, a tiny render on every node",
        description="Report versions and devices, start or join Ray, and check that a tiny random-weight SD "
        "pipeline renders the same pixels on every node as on the driver. Exit 0 when all checks pass.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cluster.doctor import run_doctor

    return run_doctor()
