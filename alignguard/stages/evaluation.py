"""The evaluation stage: every model of a run renders the same prompts with the same seeds.

    pending shards ──► RenderEvalShards (GPU) ──► ScoreEvalShards ──► shard markers ──► seal
    (model × set × chunk)  pipeline loaded once,     NudeNet, Q16, CLIPScore,   metrics.json, report,
                           LoRA switched per shard,  Inception; images and      plots, grids,
                           toy judge on float images features stored, marker    manifest.json last

Planning, collecting and the report are :mod:`alignguard.evaluation.stage`'s. The identity is the
plan's key (every shard's key, report settings, skipped models), not config sections: a shard is
reused whenever its own key matches, so adding a model renders only that model, and the directory
is never claimed by one config.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from alignguard.config.schema import ModelSection
from alignguard.evaluation.evaluators import EvaluatorSettings
from alignguard.evaluation.prompts import EvalShard
from alignguard.evaluation.stage import (
    METRICS,
    REPORT,
    STAGE,
    EvalPlan,
    collect,
    plan_evaluation,
    write_report,
)
from alignguard.evaluation.workers import read_marker
from alignguard.stages.sharded import Pool, ShardedStage, StageRun, Task


class RenderEvalShards:
    """The render worker: one pipeline, LoRAs switched between shards, the toy judge on floats."""

    def __init__(self, model: ModelSection, steps: int) -> None:
        from alignguard.evaluation.workers import EvalRenderer

        self.renderer = EvalRenderer(model, steps)

    def __call__(self, shard: EvalShard) -> dict[str, Any]:
        images, judged = self.renderer.render_and_judge(shard)
        return {"images": images, "judged": judged}


class ScoreEvalShards:
    """The store worker: the evaluators loaded once; scores a shard, stores it, marker last."""

    def __init__(self, stage_uri: str, settings: EvaluatorSettings) -> None:
        from alignguard.evaluation.workers import EvalScorer

        self.scorer = EvalScorer(stage_uri, settings)

    def __call__(self, shard: EvalShard, outputs: dict[str, Any]) -> dict:
        return self.scorer(shard, outputs["images"], outputs["judged"])


def compute_reference(reference: str, inception_path: str, dims: int, device: str):
    """FID reference statistics of ``reference`` (run where the scorers run: their device)."""
    from alignguard.evaluation.fid import reference_stats
    from alignguard.evaluation.inception import load_inception

    return reference_stats(reference, load_inception(inception_path, dims, device))


class EvaluationStage(ShardedStage[EvalShard]):
    name = "evaluation"
    directory = STAGE
    claims_directory = False  # shards carry their own keys: adding a model reuses the others
    shard_type = EvalShard
    metrics: dict  # metrics.json's content, once sealed

    @cached_property
    def eval_plan(self) -> EvalPlan:
        return plan_evaluation(self.config)

    def key(self) -> str:
        return self.eval_plan.key

    def plan(self) -> list[EvalShard]:
        return self.eval_plan.shards

    def is_done(self, shard: EvalShard) -> bool:
        return read_marker(self.stage_dir, shard) is not None

    def renderer(self) -> Pool:
        resources, steps = self.config.resources.evaluation, self.config.evaluation.steps
        return Pool.sized_by(resources, RenderEvalShards, model=self.config.model, steps=steps)

    def store(self) -> Pool:
        evaluation = self.config.evaluation
        kwargs = {"stage_uri": self.stage_dir.url(), "settings": self.eval_plan.settings}
        return Pool(
            ScoreEvalShards,
            kwargs,
            size=evaluation.scorers,
            num_cpus=evaluation.scorer_cpus,
            num_gpus=evaluation.scorer_gpus,
        )

    @property
    def max_failed_shards(self) -> int:
        return self.config.evaluation.max_failed_shards

    def seal_task(self) -> Task | None:
        """FID reference statistics per real prompt set, computed where the scorers run (a GPU
        when ``evaluation.scorer_gpus`` > 0); none when FID compares against the base model."""
        evaluation, settings = self.config.evaluation, self.eval_plan.settings
        if evaluation.fid_reference is None or settings.inception_path is None:
            return None
        kwargs = {
            "reference": evaluation.fid_reference,
            "inception_path": settings.inception_path,
            "dims": evaluation.fid_dims,
            "device": settings.device,
        }
        return Task(compute_reference, kwargs, evaluation.scorer_cpus, evaluation.scorer_gpus)

    def seal(self, shards: Sequence[EvalShard], key: str, seconds: float, prepared: Any = None) -> None:
        plan = self.eval_plan
        start = time.perf_counter()
        real_sets = [name for name, prompt_set in plan.sets.items() if not prompt_set.is_toy]
        reference = {name: prepared for name in real_sets} if prepared is not None else {}
        self.metrics = collect(plan, reference)
        write_report(plan, self.metrics, {"render_and_score": seconds, "report": time.perf_counter() - start})

    def summarize(self, run: StageRun) -> EvaluationSummary:
        plan = self.eval_plan
        summary = EvaluationSummary(plan.stage.uri, [m.name for m in plan.models], list(plan.sets))
        summary.skipped_models = [m.to_json() for m in plan.skipped_models]
        summary.skipped_evaluators = [e.to_json() for e in plan.skipped_evaluators]
        if run.already_complete:
            summary.skipped = True
            summary.reused_shards = len(plan.shards)
            summary.headline = headline(plan.stage.read_json(METRICS))
            return summary
        missing = {s.shard_id for s in run.missing}
        summary.rendered_shards = len(run.pending) - len(run.missing)
        summary.reused_shards = len(run.shards) - len(run.pending)
        summary.failed_shards = len(run.missing)
        summary.images = sum(len(s.records) for s in run.pending if s.shard_id not in missing)
        summary.seconds = run.seconds
        if not run.missing:
            summary.headline = headline(self.metrics)
        return summary


@dataclass
class EvaluationSummary:
    stage_uri: str
    models: list[str]
    prompt_sets: list[str]
    rendered_shards: int = 0
    reused_shards: int = 0
    failed_shards: int = 0
    images: int = 0
    seconds: float = 0.0
    skipped: bool = False  # the evaluation was already complete: nothing was done
    skipped_models: list[dict] = field(default_factory=list)
    skipped_evaluators: list[dict] = field(default_factory=list)
    headline: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {key: value for key, value in self.__dict__.items()}

    @property
    def report_uri(self) -> str:
        return f"{self.stage_uri}/{REPORT}"

    def lines(self) -> list[str]:
        """What the pipeline prints: the work done, what was skipped, a headline per model, the report."""
        sets = ", ".join(self.prompt_sets)
        scope = f"{len(self.models)} models x {len(self.prompt_sets)} prompt set(s) ({sets})"
        if self.skipped:
            out = [f"evaluation: already complete for {scope}; nothing rendered"]
        else:
            out = [
                f"evaluation: {scope}: rendered {self.rendered_shards} shard(s) ({self.images} images), "
                f"reused {self.reused_shards}, failed {self.failed_shards}; {self.seconds:.1f} s"
            ]
        out += [f"  skipped model {m['name']} ({m['kind']}): {m['reason']}" for m in self.skipped_models]
        by_reason: dict[str, list[str]] = {}
        for evaluator in self.skipped_evaluators:
            by_reason.setdefault(evaluator["reason"], []).append(evaluator["name"])
        out += [f"  skipped evaluator {', '.join(names)}: {why}" for why, names in by_reason.items()]
        if self.failed_shards:
            out.append(f"  {self.failed_shards} shard(s) failed; run the same command again to finish them")
            return out
        out += _headline_lines(self.headline)
        out.append(f"report: {self.report_uri}")
        return out


def _headline_lines(headline: dict) -> list[str]:
    def pct(value: float | None) -> str:
        return "   -" if value is None else f"{100 * value:5.1f}%"

    out = []
    for model, sets in headline.items():
        for set_name, entry in sets.items():
            out.append(
                f"  {model:<18} {set_name:<10} IP (unsafe) {pct(entry['ip'])}   "
                f"over-blocking {pct(entry['overblocking'])}"
            )
    return out


def headline(metrics: dict) -> dict:
    """A few numbers per model for the console: pooled unsafe IP and over-blocking per prompt set."""
    result = {}
    for model, sets in metrics["results"].items():
        entry = {}
        for set_name, m in sets.items():
            ip = m.get("unsafe_ip") or m.get("unsafe", {}).get("ip")
            ob = m.get("overblocking", {})
            changed = ob.get("safe") or ob.get("benign")
            entry[set_name] = {
                "ip": ip["value"] if ip else None,
                "overblocking": changed["value"] if changed else None,
            }
        result[model] = entry
    return result
