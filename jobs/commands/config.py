"""``alignguard config``: print the resolved config, or explain a key of the schema."""

from __future__ import annotations

import argparse
import json

from jobs.commands._common import add_config_arguments, load_args_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "config",
        help="print the resolved config, or explain a config key (--explain KEY)",
        description="Load an experiment YAML, apply overrides, validate, and print the result. "
        "With --explain KEY, print the type, default and help of a config key (with --config, also its "
        "value there); for a section (e.g. training), its fields.",
    )
    add_config_arguments(parser, required=False)
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.add_argument(
        "--explain",
        metavar="KEY",
        help="a dotted config key (training.lora.rank) or a section (training): type, default and help",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from alignguard.config import ConfigError, config_to_yaml

    if args.explain is not None:
        from alignguard.config.explain import explain

        # With --config or overrides, also show the key's value there (overrides alone: on the defaults).
        config = load_args_config(args) if args.config or args.overrides else None
        print(explain(args.explain, config))
        return 0
    if not args.config:
        raise ConfigError("--config FILE is required (or --explain KEY)")
    config = load_args_config(args)
    if args.json:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    else:
        print(config_to_yaml(config), end="")
    return 0
