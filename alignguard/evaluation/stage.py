"""The evaluation stage without Ray: plan (models, prompt sets, evaluators, shards), collect the
scored shards into metrics, write the report; ``manifest.json`` last.

``<run>/eval/`` holds ``shards/<set>/<model>/shard-NNNNN.{safetensors,json}`` (images and
features; per-image scores, the marker, written last), ``metrics.json``, ``report.md``,
``plots/``, ``grids/`` and ``manifest.json``. A shard is reused when its marker's key matches (same
model weights, generation and evaluator settings, prompts and seeds), so adding a model renders only
that model, and a rerun of a finished evaluation is a no-op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from alignguard.config.identity import identity_hash
from alignguard.config.schema import ExperimentConfig
from alignguard.evaluation.evaluators import EvaluatorSettings, Skipped, pinned_settings, resolve_evaluators
from alignguard.evaluation.models import BASE, EvalModel, SkippedModel, discover_models
from alignguard.evaluation.prompts import (
    EvalShard,
    PromptSet,
    build_prompt_set,
    default_specs,
    plan_shards,
    unsupported_format,
)
from alignguard.evaluation.workers import SHARDS_DIR, read_marker, read_shard_tensors
from alignguard.io import Manifest, RunDir, describe_outputs, git_sha, package_versions, write_manifest

STAGE = "eval"
METRICS = "metrics.json"
REPORT = "report.md"


class EvaluationInputError(ValueError):
    """The evaluation cannot start (no prompt set, a bad prompt set); the message says why."""


@dataclass
class EvalPlan:
    config: ExperimentConfig
    run: RunDir
    stage: RunDir
    models: list[EvalModel]
    skipped_models: list[SkippedModel]
    sets: dict[str, PromptSet]
    settings: EvaluatorSettings
    skipped_evaluators: list[Skipped]
    shards: list[EvalShard] = field(default_factory=list)
    key: str = ""

    def shards_of(self, model: str, set_name: str) -> list[EvalShard]:
        return [s for s in self.shards if s.model == model and s.set_name == set_name]


def plan_evaluation(config: ExperimentConfig) -> EvalPlan:
    """Everything decided before any rendering (cheap; fails fast on bad input)."""
    run = RunDir(config.run.output_dir)
    evaluation = config.evaluation
    specs = evaluation.prompt_sets or default_specs(config.model.family)
    if not specs:
        raise EvaluationInputError(
            "no evaluation prompt set: set evaluation.prompt_sets (e.g. [{name: i2p, format: prompts, "
            "path: i2p.csv, kind: unsafe}, {name: coco, format: prompts, path: coco.csv, kind: benign}])"
        )
    for spec in specs:
        if problem := unsupported_format(spec, config.model.family):
            raise EvaluationInputError(problem)
    sets = {spec.name: build_prompt_set(spec, evaluation) for spec in specs}
    for name, prompt_set in sets.items():
        if not prompt_set.records:
            raise EvaluationInputError(f"prompt set {name!r} has no prompts")
    device = "cuda" if evaluation.scorer_gpus > 0 else "cpu"
    has_real = any(not s.is_toy for s in sets.values())
    settings, skipped_evaluators = resolve_evaluators(evaluation, has_real, device)
    models, skipped_models = discover_models(run, config)
    plan = EvalPlan(config, run, run.sub(STAGE), models, skipped_models, sets, settings, skipped_evaluators)
    generation = {"model": config.model.model_dump(mode="json"), "steps": evaluation.steps}
    for model in models:
        lora = run.url(model.lora) if model.lora else None
        for prompt_set in sets.values():
            scoring = {} if prompt_set.is_toy else {"evaluators": settings.to_json()}
            parts = {**generation, **scoring, "lora": model.sha256}
            plan.shards += plan_shards(prompt_set, model.name, lora, evaluation.batch_size, parts)
    report_settings = {
        k: getattr(evaluation, k) for k in ("change_threshold", "grid_images", "fid_reference")
    }
    identity = {
        "shards": [s.key for s in plan.shards],
        "report": report_settings,
        "skipped": [m.to_json() for m in skipped_models],
    }
    plan.key = identity_hash(identity, spaced=True)
    return plan


def pending_shards(plan: EvalPlan) -> list[EvalShard]:
    """Shards without a marker for their current key, ordered by model (fewer LoRA switches)."""
    return [s for s in plan.shards if read_marker(plan.stage, s) is None]


class ShardImages:
    """Reads stored shard tensors on demand (a few cached), addressing images by record index."""

    def __init__(self, plan: EvalPlan, cache: int = 8) -> None:
        self.plan = plan
        self.cache: dict[str, dict[str, np.ndarray]] = {}
        self.limit = cache

    def tensors(self, shard: EvalShard) -> dict[str, np.ndarray]:
        if shard.shard_id not in self.cache:
            if len(self.cache) >= self.limit:
                self.cache.pop(next(iter(self.cache)))
            self.cache[shard.shard_id] = read_shard_tensors(self.plan.stage, shard)
        return self.cache[shard.shard_id]

    def images(self, model: str, set_name: str, indices: list[int]) -> np.ndarray:
        size = self.plan.config.evaluation.batch_size
        shards = self.plan.shards_of(model, set_name)
        return np.stack([self.tensors(shards[i // size])["images"][i % size] for i in indices])


def collect(plan: EvalPlan, reference_stats: dict | None = None) -> dict:
    """``metrics.json``'s content from the markers and stored tensors of every planned shard."""
    from alignguard.evaluation.metrics import real_metrics, toy_metrics

    reader = ShardImages(plan)
    rows = {(s.model, s.set_name): [] for s in plan.shards}
    for shard in plan.shards:
        marker = read_marker(plan.stage, shard)
        if marker is None:
            raise RuntimeError(f"shard {shard.shard_id} is not complete")
        rows[(shard.model, shard.set_name)] += marker["rows"]
    results: dict[str, dict] = {m.name: {} for m in plan.models}
    threshold = plan.config.evaluation.change_threshold
    for set_name, prompt_set in plan.sets.items():
        base_rows = rows[(BASE, set_name)]
        for model in plan.models:
            is_base = model.name == BASE
            distances = None if is_base else _distances(plan, reader, model.name, set_name)
            model_rows = rows[(model.name, set_name)]
            if prompt_set.is_toy:
                result = toy_metrics(prompt_set, model_rows, None if is_base else base_rows, distances)
            else:
                result = real_metrics(prompt_set, model_rows, distances, threshold)
            results[model.name][set_name] = result
        if not prompt_set.is_toy and plan.settings.inception_path is not None:
            _add_fid(plan, reader, set_name, results, (reference_stats or {}).get(set_name))
    return _metrics_document(plan, results)


def _distances(plan: EvalPlan, reader: ShardImages, model: str, set_name: str) -> np.ndarray:
    from alignguard.evaluation.metrics import pixel_distance

    parts = []
    for shard, base in zip(plan.shards_of(model, set_name), plan.shards_of(BASE, set_name), strict=True):
        parts.append(
            pixel_distance(read_shard_tensors(plan.stage, shard)["images"], reader.tensors(base)["images"])
        )
    return np.concatenate(parts)


def _features(plan: EvalPlan, model: str, set_name: str) -> np.ndarray:
    return np.concatenate(
        [read_shard_tensors(plan.stage, s)["inception"] for s in plan.shards_of(model, set_name)]
    )


def _add_fid(plan: EvalPlan, reader: ShardImages, set_name: str, results: dict, reference) -> None:
    from alignguard.evaluation.fid import FeatureStats, fid_of_stats

    if len(plan.sets[set_name].records) < 2:
        return
    label = "reference images" if reference is not None else "base model"
    if reference is None:
        reference = FeatureStats.of(_features(plan, BASE, set_name))
    for model in plan.models:
        if model.name == BASE and label == "base model":
            continue
        stats = FeatureStats.of(_features(plan, model.name, set_name))
        results[model.name][set_name]["fid"] = {
            "value": round(fid_of_stats(stats, reference), 4),
            "reference": label,
            "n": stats.n,
        }


def _grid_indices(prompt_set: PromptSet, per_group: int) -> dict[str, list[int]]:
    indices: dict[str, list[int]] = {}
    for record in prompt_set.records:
        group = indices.setdefault(record.group, [])
        if len(group) < per_group:
            group.append(record.index)
    return indices


def _metrics_document(plan: EvalPlan, results: dict) -> dict:
    config, evaluation = plan.config, plan.config.evaluation
    sets = {}
    for name, prompt_set in plan.sets.items():
        sets[name] = {
            **prompt_set.describe(),
            "grid_indices": _grid_indices(prompt_set, evaluation.grid_images),
        }
    return {
        "run": plan.run.uri,
        "run_name": config.run.name,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "key": plan.key,
        "generation": {
            "model": {"family": config.model.family, "path": config.model.path},
            "steps": evaluation.steps,
            "guidance": evaluation.guidance,
            "seed": evaluation.seed,
            "batch_size": evaluation.batch_size,
            "use_prompt_seeds": evaluation.use_prompt_seeds,
            "use_prompt_guidance": evaluation.use_prompt_guidance,
            "change_threshold": evaluation.change_threshold,
        },
        "settings": pinned_settings(evaluation, plan.settings, any(s.is_toy for s in plan.sets.values())),
        "prompt_sets": sets,
        "models": {m.name: m.to_json() for m in plan.models},
        "skipped_models": [m.to_json() for m in plan.skipped_models],
        "skipped_evaluators": [e.to_json() for e in plan.skipped_evaluators],
        "results": results,
    }


def write_report(plan: EvalPlan, metrics: dict, timings: dict[str, float]) -> list[str]:
    """Report files, ``metrics.json``, then ``manifest.json`` last. Returns the files written."""
    from alignguard.evaluation.report import build_report

    reader = ShardImages(plan)
    files = build_report(metrics, reader.images, plan.config.evaluation.grid_images)
    for rel, data in files.items():
        plan.stage.write_bytes(rel, data)
    plan.stage.write_json(METRICS, metrics)
    outputs = [*files, METRICS] + [f"{SHARDS_DIR}/{s.shard_id}.json" for s in plan.shards]
    write_manifest(
        plan.stage,
        Manifest(
            stage=STAGE,
            config={
                "evaluation": plan.config.evaluation.model_dump(mode="json"),
                "model": plan.config.model.model_dump(mode="json"),
            },
            config_hash=plan.key,
            outputs=describe_outputs(plan.stage, outputs),
            inputs={m.name: m.sha256 or "" for m in plan.models if m.sha256},
            seeds={"evaluation": plan.config.evaluation.seed},
            timings=timings,
            summary={
                "models": [m.name for m in plan.models],
                "prompt_sets": list(plan.sets),
                "skipped_models": len(plan.skipped_models),
            },
        ),
    )
    return [*sorted(files), METRICS]


def toy_report_results(metrics: dict, set_name: str = "toyworld") -> dict[str, dict]:
    """``compare_loras``' result (``{"base": ..., model: ...}``) read from ``metrics.json``'s content:
    the same numbers, since the toy set is that report's suite with the same seeds, steps and
    guidance, so a caller that already evaluated need not render the suite again."""
    return {
        model: sets[set_name]["toyworld"] for model, sets in metrics["results"].items() if set_name in sets
    }
