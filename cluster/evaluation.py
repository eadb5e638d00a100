"""Evaluation on Ray Data: every model of a run renders the same prompts with the same seeds.

    pending shards ──► RenderEvalShards actors (GPU) ──► ScoreEvalShards actors ──► shard markers
    (model × set × chunk)  pipeline loaded once,          NudeNet, Q16, CLIPScore,
                           LoRA switched per shard,       Inception; images and
                           toy judge on float images      features stored, marker last

Then the driver collects the markers into ``metrics.json``, ``report.md``, plots and grids, and
writes ``manifest.json`` last. Faults: Ray Data restarts a killed actor and retries its shard; a
crashed job is resumed by running it again (only shards without a valid marker are rendered); a
rerun of a finished evaluation is a no-op. :func:`run_evaluation` is the entry point the CLI and
the pipeline call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import ray

from alignguard.config.schema import ExperimentConfig
from alignguard.evaluation.prompts import EvalShard
from alignguard.evaluation.stage import (
    METRICS,
    REPORT,
    EvalPlan,
    collect,
    pending_shards,
    plan_evaluation,
    write_report,
)
from alignguard.io import read_manifest, stage_status
from cluster.runtime import init_ray


class RenderEvalShards:
    """Ray Data UDF: one batch = one shard; the pipeline is loaded once per actor."""

    def __init__(self, model_json: str, steps: int) -> None:
        from alignguard.config.schema import ModelSection
        from alignguard.evaluation.workers import EvalRenderer

        self.renderer = EvalRenderer(ModelSection.model_validate_json(model_json), steps)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        shard = EvalShard.from_json(str(batch["shard"][0]))
        images, judged = self.renderer.render_and_judge(shard)
        return {"shard": batch["shard"], "images": images[None], "judged": np.array([json.dumps(judged)])}


class ScoreEvalShards:
    """Ray Data UDF: the evaluators are loaded once per actor; stores the shard, marker last."""

    def __init__(self, stage_uri: str, settings_json: str) -> None:
        from alignguard.evaluation.evaluators import EvaluatorSettings
        from alignguard.evaluation.workers import EvalScorer

        self.scorer = EvalScorer(stage_uri, EvaluatorSettings.from_json(settings_json))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        shard = EvalShard.from_json(str(batch["shard"][0]))
        summary = self.scorer(shard, batch["images"][0], json.loads(str(batch["judged"][0])))
        return {name: np.array([value]) for name, value in summary.items()}


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


def run_evaluation(config: ExperimentConfig, force: bool = False) -> EvaluationSummary:
    """Render, score and report every evaluable model of the run; a no-op when already complete."""
    plan = plan_evaluation(config)
    summary = EvaluationSummary(plan.stage.uri, [m.name for m in plan.models], list(plan.sets))
    summary.skipped_models = [m.to_json() for m in plan.skipped_models]
    summary.skipped_evaluators = [e.to_json() for e in plan.skipped_evaluators]
    manifest = read_manifest(plan.stage) if plan.stage.exists("manifest.json") else None
    if (
        not force
        and manifest is not None
        and stage_status(plan.stage, plan.key, verify_hashes=False).complete
    ):
        summary.skipped = True
        summary.reused_shards = len(plan.shards)
        summary.headline = headline(plan.stage.read_json(METRICS))
        return summary
    start = time.perf_counter()
    pending = plan.shards if force else pending_shards(plan)
    if pending:
        _render(config, plan, pending)
    render_seconds = time.perf_counter() - start
    missing = pending_shards(plan)
    summary.rendered_shards = len(pending) - len(missing)
    summary.reused_shards = len(plan.shards) - len(pending)
    summary.failed_shards = len(missing)
    missing_ids = {s.shard_id for s in missing}
    summary.images = sum(len(s.records) for s in pending if s.shard_id not in missing_ids)
    if missing:
        summary.seconds = time.perf_counter() - start
        return summary
    report_start = time.perf_counter()
    metrics = collect(plan, _reference_stats(plan))
    write_report(
        plan, metrics, {"render_and_score": render_seconds, "report": time.perf_counter() - report_start}
    )
    summary.seconds = time.perf_counter() - start
    summary.headline = headline(metrics)
    return summary


def _render(config: ExperimentConfig, plan: EvalPlan, pending: list[EvalShard]) -> None:
    init_ray()
    resources, evaluation = config.resources.evaluation, config.evaluation
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = evaluation.max_failed_shards
    rows = [{"shard": shard.to_json()} for shard in pending]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    rendered = dataset.map_batches(
        RenderEvalShards,
        fn_constructor_kwargs={"model_json": config.model.model_dump_json(), "steps": evaluation.steps},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=resources.concurrency),
        num_gpus=resources.num_gpus,
        num_cpus=resources.num_cpus,
    )
    scored = rendered.map_batches(
        ScoreEvalShards,
        fn_constructor_kwargs={"stage_uri": plan.stage.url(), "settings_json": plan.settings.to_json()},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=evaluation.scorers),
        num_cpus=evaluation.scorer_cpus,
        num_gpus=evaluation.scorer_gpus,
    )
    for _ in scored.iter_rows():  # streams; Ray Data draws the progress bars
        pass


def _reference_stats(plan: EvalPlan) -> dict:
    """FID reference statistics per real prompt set, computed where the scorers run (a GPU when
    ``evaluation.scorer_gpus`` > 0); empty when FID compares against the base model."""
    evaluation = plan.config.evaluation
    if evaluation.fid_reference is None or plan.settings.inception_path is None:
        return {}
    init_ray()
    task = ray.remote(_compute_reference).options(
        num_cpus=evaluation.scorer_cpus, num_gpus=evaluation.scorer_gpus
    )
    stats = ray.get(
        task.remote(
            evaluation.fid_reference, plan.settings.inception_path, evaluation.fid_dims, plan.settings.device
        )
    )
    return {name: stats for name, prompt_set in plan.sets.items() if not prompt_set.is_toy}


def _compute_reference(reference: str, inception_path: str, dims: int, device: str):
    from alignguard.evaluation.fid import reference_stats
    from alignguard.evaluation.inception import load_inception

    return reference_stats(reference, load_inception(inception_path, dims, device))


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


__all__ = ["REPORT", "EvaluationSummary", "run_evaluation"]
