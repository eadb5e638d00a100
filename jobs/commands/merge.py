"""``alignguard merge``: merge the run's category experts into one LoRA (Co-Merge or a baseline)."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.commands._common import add_config_arguments, load_args_config

EXIT_USAGE = 2

DESCRIPTION = """\
Merge <run>/experts/<category>/pytorch_lora_weights.safetensors (every category in data.categories)
into <run>/merged/pytorch_lora_weights.safetensors, with merge_report.json, plots and manifest.json.
The work runs in a Ray actor placed by resources.merge (a GPU worker in production).

Strategy and options are config (merge.*): strategy co_merge (granularity token|element|row,
calibrated on prompts of every category), linear, task_arithmetic, ties, dare_linear, dare_ties,
magnitude_prune, concat; merge.rank (null: exact), merge.density, merge.scale, merge.svd;
merge.baselines also writes the listed merges to <run>/merge_baselines/<name>/.
merge.refine.steps > 0 then distils every expert into the merged LoRA end to end (needs the
synthesis stage's cache; the report records each expert's retention before and after).

examples:
  alignguard merge --config configs/toy.yaml
  alignguard merge --config configs/toy.yaml merge.refine.steps=0        # Co-Merge alone
  alignguard merge --config configs/toy.yaml merge.strategy=ties merge.rank=16 run.output_dir=runs/x
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "merge",
        help="merge the category experts into one LoRA (Co-Merge, baselines, diagnostics)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--force", action="store_true", help="merge again even if <run>/merged is complete for these inputs"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from alignguard.merge.preflight import MergeInputError
    from cluster.merge import run_merge

    config = load_args_config(args)
    try:
        summary = run_merge(config, force=args.force)
    except MergeInputError as exc:  # raised here, or in the actor (then Ray wraps it: show the cause)
        print(f"error: {getattr(exc, 'cause', None) or exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(summary))
    return 0
