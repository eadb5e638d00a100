"""Evaluation on Ray: the evaluation stage (``alignguard.stages.evaluation``) on the sharded-stage
runner (``cluster.stages``). Every model of a run renders the same prompts with the same seeds;
the driver collects the scored shards into ``metrics.json``, ``report.md``, plots and grids, and
writes ``manifest.json`` last. A crashed job is resumed by running it again (only shards without a
valid marker are rendered); a rerun of a finished evaluation is a no-op. :func:`run_evaluation` is
the entry point the CLI and the pipeline call.
"""

from __future__ import annotations

from alignguard.config.schema import ExperimentConfig
from alignguard.evaluation.stage import REPORT
from alignguard.stages.evaluation import EvaluationStage, EvaluationSummary
from cluster.stages import run_sharded_stage


def run_evaluation(config: ExperimentConfig, force: bool = False) -> EvaluationSummary:
    """Render, score and report every evaluable model of the run; a no-op when already complete."""
    return run_sharded_stage(EvaluationStage(config), force)


__all__ = ["REPORT", "EvaluationSummary", "run_evaluation"]
