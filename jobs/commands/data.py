"""``alignguard data``: inspect prompt-pair data."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
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
    stats.set_defaults(handler=run_stats)


def run_stats(args: argparse.Namespace) -> int:
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
