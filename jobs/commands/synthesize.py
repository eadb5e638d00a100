"""``alignguard synthesize``: render CoProV2-style pairs with the model to be aligned."""

from __future__ import annotations

import argparse

from jobs.commands._common import add_config_arguments, load_args_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "synthesize",
        help="render both images of every prompt pair (same seed) and cache latents + text embeddings",
        description="Write <run.output_dir>/synthesis/: images of every unsafe prompt and its safe twin, "
        "rendered with the same seed by the model to be aligned, a Parquet table of the pairs, and the "
        "training cache (VAE latents, text-encoder outputs). Runs on Ray Data (local Ray if no cluster). "
        "A rerun renders only what is missing; a finished stage is a no-op.",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cluster.synthesis import run_synthesis

    summary = run_synthesis(load_args_config(args))
    print("\n".join(summary.lines()))
    return 1 if summary.failed_shards else 0
