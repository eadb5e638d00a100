"""``alignguard data``: inspect prompt-pair data."""

from __future__ import annotations

import argparse
import json

from jobs.commands._common import add_config_arguments, load_args_config


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

    export = data_sub.add_parser(
        "export-pickapic",
        help="write a synthesis stage as a Pick-a-Pic / Diffusion-DPO table (jpg_0, jpg_1, label_0, caption)",
        description="Export <run.output_dir>/synthesis/ in the layout the official AlignGuard training code "
        "reads: safe image preferred; with --strategy both_prompts each pair is listed under both captions.",
    )
    add_config_arguments(export)
    export.add_argument("--out", required=True, help="output .parquet file")
    export.add_argument("--strategy", choices=["both_prompts", "unsafe_prompt"], default="both_prompts")
    export.set_defaults(handler=run_export)

    importer = data_sub.add_parser(
        "import-pickapic",
        help="build a synthesis stage from a Pick-a-Pic / Diffusion-DPO table",
        description="Read a Parquet table (jpg_0, jpg_1, label_0, caption[, category]) into "
        "<run.output_dir>/synthesis/ with its training cache, encoded by the configured model.",
    )
    add_config_arguments(importer)
    importer.add_argument("--table", required=True, help="input .parquet file")
    importer.add_argument("--category", help="category of every row, when the table has no category column")
    importer.set_defaults(handler=run_import)


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


def run_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from alignguard.io import RunDir
    from alignguard.synthesis.interop import export_pickapic

    config = load_args_config(args)
    data = export_pickapic(RunDir(config.run.output_dir).sub("synthesis"), args.strategy)
    Path(args.out).write_bytes(data)
    print(f"wrote {args.out} ({len(data):,} bytes)")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from cluster.synthesis import import_pickapic_stage

    summary = import_pickapic_stage(load_args_config(args), args.table, args.category)
    print("\n".join(summary.lines()))
    return 0
