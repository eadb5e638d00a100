"""``alignguard train``: Diffusion-DPO safety experts on Ray Train + DeepSpeed."""

from __future__ import annotations

import argparse

from jobs.commands._common import add_config_arguments, load_args_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train the safety experts (one LoRA per category, Diffusion-DPO), many at once",
        description="Train one Diffusion-DPO LoRA expert per category in data.categories (and/or the "
        "all_single LoRA, training.experts) on the synthesis cache, concurrently on Ray Train with "
        "DeepSpeed. Writes <run.output_dir>/experts/<expert>/pytorch_lora_weights.safetensors, metrics.json, "
        "steps.jsonl and manifest.json. Rerunning resumes interrupted experts and skips finished ones. "
        "Exit 1 if any expert failed.",
    )
    add_config_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cluster.training import run_fleet, summary_table

    outcomes = run_fleet(load_args_config(args))
    print(summary_table(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0
