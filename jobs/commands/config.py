"""``alignguard config``: print the resolved config."""

from __future__ import annotations

import argparse
import json

from jobs.commands._common import add_config_arguments, load_args_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "config",
        help="print the resolved config",
        description="Load an experiment YAML, apply overrides, validate, and print the result.",
    )
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from alignguard.config import config_to_yaml

    config = load_args_config(args)
    if args.json:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    else:
        print(config_to_yaml(config), end="")
    return 0
