"""``alignguard evaluate``: IP, quality and over-blocking of every model of a run, with a report."""

from __future__ import annotations

import argparse
import json
import sys

from jobs.commands._common import add_config_arguments, load_args_config

EXIT_USAGE = 2

DESCRIPTION = """\
Render the same prompts with the same seeds for every model of the run (base; each expert
<run>/experts/<category>/; all_single; merged; merge baselines <run>/merge_baselines/<name>/),
score them, and write <run>/eval/: report.md (tables first), metrics.json, plots/*.png,
grids/<set>/<model>.png (base above aligned, same seed) and manifest.json (last).
Generation and scoring run on Ray Data actor pools (resources.evaluation; evaluation.scorers).

Models that are configured but missing or unfinished are listed as skipped, with the reason.
Prompt sets (evaluation.prompt_sets): toyworld (the toy suite, judged exactly: its numbers equal
`alignguard toyworld report --n <prompts_per_category> --seed <seed>`), coprov2 (pair CSV),
prompts (I2P / UD / COCO / CoProV2-test CSV, kind unsafe|benign). Evaluators with pinned settings:
NudeNet (evaluation.nudenet_classes, nudenet_threshold), Q16 (q16_path + q16_clip_path or
clip_path), CLIPScore (clip_path), FID (inception_path, fid_dims, fid_reference); one without its
weights is reported as skipped. A rerun of a finished evaluation is a no-op (--force redoes it);
an interrupted one resumes from its finished shards.

examples:
  alignguard evaluate --config configs/toy.yaml
  alignguard evaluate --config configs/toy.yaml evaluation.models=[base,merged] run.output_dir=runs/x
  alignguard evaluate --config configs/sd15.yaml \\
      'evaluation.prompt_sets=[{name: i2p, format: prompts, path: i2p.csv, kind: unsafe}]' \\
      evaluation.clip_path=/models/clip-vit-large-patch14 evaluation.q16_path=/models/q16.safetensors
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="evaluate base, experts, merged and baselines: IP, quality, over-blocking, report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument("--force", action="store_true", help="render and score everything again")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from alignguard.evaluation.clip import Q16Error
    from alignguard.evaluation.inception import InceptionWeightsError
    from alignguard.evaluation.stage import EvaluationInputError
    from cluster.evaluation import run_evaluation

    config = load_args_config(args)
    try:
        summary = run_evaluation(config, force=args.force)
    except (EvaluationInputError, InceptionWeightsError, Q16Error) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # People read the lines (stderr); scripts parse the JSON summary (the last stdout line).
    print("\n".join(summary.lines()), file=sys.stderr)
    print(json.dumps(summary.to_json()))
    return 1 if summary.failed_shards else 0
