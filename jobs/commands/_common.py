"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse


def add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--config FILE`` and positional ``key.sub=value`` overrides, shared by every job command."""
    parser.add_argument(
        "--config", required=required, metavar="FILE", help="experiment YAML, e.g. configs/toy.yaml"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="override any config key, e.g. training.lora.rank=8 run.output_dir=s3://bucket/run",
    )


def load_args_config(args: argparse.Namespace):
    """The validated config named by ``--config`` with the overrides applied."""
    from alignguard.config import load_config

    return load_config(args.config, args.overrides)  # config None: the defaults


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
