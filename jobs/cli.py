"""The ``alignguard`` command line.

Every job command takes ``--config FILE`` and ``key.sub=value`` overrides, and is also a script
under ``jobs/`` for ``ray job submit``. Commands import their heavy dependencies lazily, so
``alignguard --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from alignguard import __version__

EXIT_USAGE = 2

DESCRIPTION = """\
AlignGuard: safety alignment of text-to-image models (DPO safety experts + Co-Merge) on Ray.

Each job command reads an experiment YAML (configs/*.yaml) and accepts overrides, e.g.
  alignguard config --config configs/sd15.yaml training.lora.rank=8
"""


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` and positional ``key.sub=value`` overrides, shared by every job command."""
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="experiment YAML, e.g. configs/toy.yaml"
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

    return load_config(args.config, args.overrides)


def _cmd_config(args: argparse.Namespace) -> int:
    from alignguard.config import config_to_yaml

    config = load_args_config(args)
    if args.json:
        print(json.dumps(config.model_dump(mode="json"), indent=2))
    else:
        print(config_to_yaml(config), end="")
    return 0


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from alignguard.data import CATEGORIES, coprov2_stats, read_coprov2

    stats = coprov2_stats(read_coprov2(args.path))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"file:                  {args.path}")
    print(f"pairs:                 {stats['pairs']:,}")
    print(
        f"prompts:               {stats['prompts']:,} ({stats['unique_unsafe_prompts']:,} unique unsafe, "
        f"{stats['unique_safe_prompts']:,} unique safe)"
    )
    print(f"duplicate pairs:       {stats['duplicate_pairs']:,}")
    print("labels per pair:       " + ", ".join(f"{k}: {v:,}" for k, v in stats["labels_per_pair"].items()))
    print("pairs per category (a multi-label pair counts under each label):")
    for category in CATEGORIES:
        print(f"  {category:<18} {stats['categories'][category]:>7,}")
    return 0


def _register_config(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "config",
        help="print the resolved config",
        description="Load an experiment YAML, apply overrides, validate, and print the result.",
    )
    add_config_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.set_defaults(handler=_cmd_config)


def _register_data(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data", help="inspect prompt-pair data", description="Inspect prompt-pair data files."
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="<subcommand>", required=True)
    stats = data_sub.add_parser(
        "stats",
        help="pairs, prompts and per-category counts of a CoProV2-format CSV",
        description="Read a CoProV2-format CSV (prompt,image,category), validate it, and print its counts.",
    )
    stats.add_argument("path", help="CSV file, e.g. ../shared/data/CoProv2_train.csv")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(handler=_cmd_data_stats)


def _register_doctor(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check the stack: versions, devices, Ray, a tiny render on every node",
        description="Report versions and devices, start or join Ray, and check that a tiny random-weight SD "
        "pipeline renders the same pixels on every node as on the driver. Exit 0 when all checks pass.",
    )

    def handler(args: argparse.Namespace) -> int:
        from cluster.doctor import run_doctor

        return run_doctor()

    parser.set_defaults(handler=handler)


# Each issue's command registers itself here (a function taking the subparsers object).
REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_config,
    _register_data,
    _register_doctor,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignguard", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"alignguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print ``error: ...`` and exit 2 instead of a traceback."""
    from alignguard.config import ConfigError
    from alignguard.data import DataFormatError
    from alignguard.io import StorageError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, DataFormatError, StorageError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
