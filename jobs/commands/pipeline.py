"""``alignguard pipeline``: synthesis -> experts -> merge -> evaluation, resumable, in one command."""

from __future__ import annotations

import argparse

from alignguard.stages.registry import STAGES  # the core's list: --help imports no Ray
from jobs.commands._common import add_config_arguments, load_args_config


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pipeline",
        help="run every stage: synthesis, experts, merge, evaluation (each skipped when already complete)",
        description="Run the whole AlignGuard pipeline on one config: render the pairs, train the safety "
        "experts, merge them, evaluate. Each stage is skipped when its outputs are complete and valid and "
        "resumed when it was interrupted; a failure names the stage. Ends with the results table (IP per "
        "category: base -> own expert -> merged; preservation), the report's path, and how to serve it.",
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--stages",
        default=",".join(STAGES),
        help=f"comma-separated subset, in order (default: {','.join(STAGES)})",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from cluster.pipeline import PipelineStageError, results_table, run_pipeline

    config = load_args_config(args)
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    try:
        summary = run_pipeline(config, stages)
    except PipelineStageError as exc:
        print(f"error: {exc}\nFix the cause and run the same command again: finished stages are skipped.")
        return 1
    print("\n== results ==")
    if summary.results:
        print(results_table(summary.results, config.data.categories))
    print("wall time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in summary.timings.items()))
    print(f"report: {summary.run_dir}/eval/report.md")
    print(f"serve it: alignguard serve --config {args.config} run.output_dir={config.run.output_dir}")
    return 0
