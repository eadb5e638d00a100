"""The one-command pipeline: synthesis -> experts -> merge -> evaluation (-> serving).

Each stage is skipped when its outputs are complete and valid (its manifest), resumed when it
was interrupted, and a failing stage stops the pipeline with an error that names it. The end is
a results table a person can read — IP per category: base -> own expert -> merged, and how much
of the safe and benign content the merged model preserves — the report's path, and how to serve.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from alignguard.config.schema import ExperimentConfig
from alignguard.data.taxonomy import CATEGORIES
from alignguard.families import get_family
from alignguard.io import RunDir
from alignguard.stages.registry import STAGES, sharded_stage


class PipelineStageError(RuntimeError):
    """A stage failed; the message names it and what it said."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        super().__init__(f"pipeline stage '{stage}' failed: {type(cause).__name__}: {cause}")
        self.stage = stage


@dataclass
class PipelineSummary:
    run_dir: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    results: dict | None = None


def _synthesis(config: ExperimentConfig) -> list[str]:
    from cluster.synthesis import run_synthesis

    summary = run_synthesis(config)
    if summary.failed_shards:
        raise RuntimeError(f"{summary.failed_shards} shard(s) failed; rerun the pipeline to finish them")
    return summary.lines()


def _experts(config: ExperimentConfig) -> list[str]:
    from cluster.training import run_fleet, summary_table

    outcomes = run_fleet(config)
    failed = [o.name for o in outcomes if o.status == "failed"]
    table = summary_table(outcomes)
    if failed:
        raise RuntimeError(f"expert(s) {', '.join(failed)} failed:\n{table}")
    return table.splitlines()


def _merge(config: ExperimentConfig) -> list[str]:
    from cluster.merge import run_merge

    report = run_merge(config)
    return [
        f"merge: {report.get('status', 'done')} ({config.merge.strategy}) -> {config.run.output_dir}/merged"
    ]


def _evaluation(config: ExperimentConfig) -> list[str]:
    from cluster.evaluation import run_evaluation

    return run_evaluation(config).lines()


def _sharded(name: str) -> Callable[[ExperimentConfig], list[str]]:
    """The runner of a registered sharded stage without one of its own: the Ray Data runner."""

    def run(config: ExperimentConfig) -> list[str]:
        from cluster.stages import run_sharded_stage

        summary = run_sharded_stage(sharded_stage(name, config))
        if summary.failed_shards:
            raise RuntimeError(f"{summary.failed_shards} shard(s) failed; rerun the pipeline to finish them")
        return summary.lines()

    return run


RUNNERS: dict[str, Callable[[ExperimentConfig], list[str]]] = {
    "synthesis": _synthesis,
    "experts": _experts,
    "merge": _merge,
    "evaluation": _evaluation,
}


def run_pipeline(config: ExperimentConfig, stages: tuple[str, ...] = STAGES, echo=print) -> PipelineSummary:
    """Run ``stages`` in order; stop at the first failure with a :class:`PipelineStageError`."""
    summary = PipelineSummary(run_dir=RunDir(config.run.output_dir).uri)
    for stage in stages:
        echo(f"== {stage} ==")
        start = time.perf_counter()
        try:
            lines = RUNNERS.get(stage, _sharded(stage))(config)
        except Exception as exc:
            raise PipelineStageError(stage, exc) from exc
        summary.timings[stage] = time.perf_counter() - start
        summary.notes[stage] = lines
        echo("\n".join(lines))
    if get_family(config.model.family).report_suite and "merge" in stages:
        summary.results = toy_results(config, from_evaluation="evaluation" in stages)
    return summary


def toy_results(config: ExperimentConfig, from_evaluation: bool = False) -> dict:
    """Base, each category's own expert and the merged LoRA on the toy report suite. With
    ``from_evaluation`` (the evaluation stage has just run, or verified itself complete, for
    these very LoRAs) they are read from its ``metrics.json``: the same suite, seeds, steps and
    guidance, so the same numbers. Otherwise — an older ``eval/`` may describe other LoRAs —
    they are rendered here."""
    from alignguard.toyworld.report import compare_loras
    from alignguard.toyworld.store import load_toy_pipeline

    run = RunDir(config.run.output_dir)
    wanted = {"base", "merged", *config.data.categories}
    if from_evaluation and run.exists("eval", "metrics.json"):
        from alignguard.evaluation.stage import toy_report_results

        results = toy_report_results(run.read_json("eval", "metrics.json"))
        if wanted <= set(results):
            return results
    loras = {c: run.path("experts", c, "pytorch_lora_weights.safetensors") for c in config.data.categories}
    loras["merged"] = run.path("merged", "pytorch_lora_weights.safetensors")
    return compare_loras(
        load_toy_pipeline(config.model.path),
        loras,
        n=config.evaluation.prompts_per_category,
        seed=config.evaluation.seed,
        steps=config.evaluation.steps,
        guidance=config.evaluation.guidance,
    )


def results_table(results: dict, categories: tuple[str, ...] = CATEGORIES) -> str:
    """IP per category: base -> own expert -> merged; preservation of the merged model."""
    header = f"{'category':<18} {'IP base':>8} {'-> expert':>10} {'-> merged':>10} {'safe twins kept':>16}"
    lines = [header, "-" * len(header)]
    merged = results["merged"]["categories"]
    for category in categories:
        base = results["base"]["categories"][category]["unsafe_ip"]
        expert = (
            results.get(category, {}).get("categories", {}).get(category, {}).get("unsafe_ip", float("nan"))
        )
        lines.append(
            f"{category:<18} {base:>8.2f} {expert:>10.2f} {merged[category]['unsafe_ip']:>10.2f} "
            f"{merged[category]['preserved']:>16.2f}"
        )
    lines.append(
        f"{'benign prompts kept by the merged model':<48} {results['merged']['benign_preserved']:>16.2f}"
    )
    return "\n".join(lines)
