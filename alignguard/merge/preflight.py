"""Can the merge start? Its expert files, its engine options, and every check that needs no model.

Run on the driver before the merge actor is placed (``cluster.merge``) and again in the stage, so a
missing expert or calibration source fails in seconds, before any model loads.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from alignguard.config.schema import ExperimentConfig
from alignguard.io import RunDir, stage_status
from alignguard.merge.engine import MergeOptions

LORA_NAME = "pytorch_lora_weights.safetensors"


class MergeInputError(ValueError):
    """The run's experts (or calibration set) cannot be merged; the message says which and why."""


@contextlib.contextmanager
def as_input_error(*errors: type[Exception]) -> Iterator[None]:
    try:
        yield
    except errors as exc:
        raise MergeInputError(str(exc)) from None


def expert_paths(config: ExperimentConfig) -> dict[str, str]:
    """Expert name → path of its LoRA file relative to the run directory."""
    return {c: f"experts/{c}/{LORA_NAME}" for c in config.data.categories}


def check_experts(run: RunDir, config: ExperimentConfig) -> dict[str, str]:
    """The expert files, after checking each exists and its directory's manifest verifies."""
    paths, problems = expert_paths(config), []
    for name, rel in paths.items():
        status = stage_status(run.sub(f"experts/{name}"), verify_hashes=False)
        if not run.exists(rel):
            problems.append(f"{name}: {run.url(rel)} is missing")
        elif not status.complete:
            why = "; ".join(status.reasons) or "no manifest.json (training did not finish)"
            problems.append(f"{name}: {run.url('experts', name)} is not complete ({why})")
    if problems:
        raise MergeInputError("cannot merge, experts not ready:\n  " + "\n  ".join(problems))
    return paths


def preflight(run: RunDir, config: ExperimentConfig) -> dict[str, str]:
    """Everything that can be checked without loading a model: the experts, and (for Co-Merge)
    that a calibration set can be built. Returns the expert files."""
    paths = check_experts(run, config)
    main, baselines = variants(config)
    if any(o.strategy == "co_merge" for o in (main, *baselines.values())):
        from alignguard.merge.providers import CalibrationUnavailable, select_provider

        with as_input_error(CalibrationUnavailable):
            select_provider(config, run)
    if config.merge.refine.steps:
        _check_refine_inputs(run)
    return paths


def _check_refine_inputs(run: RunDir) -> None:
    """merge.refine distils over the synthesis stage's training cache: it must be there."""
    from alignguard.synthesis.store import has_pair_cache

    synthesis = run.sub("synthesis")
    why = None
    if not stage_status(synthesis, verify_hashes=False).complete:
        why = f"{run.url('synthesis')} is not complete: run `alignguard synthesize` (or the pipeline) first"
    elif not has_pair_cache(synthesis):
        why = f"{run.url('synthesis')} has no training cache: synthesize with synthesis.cache_latents=true"
    if why is not None:
        raise MergeInputError(
            f"merge.refine needs the synthesis stage's training cache, and {why}; or set merge.refine.steps=0"
        )


def variants(config: ExperimentConfig) -> tuple[MergeOptions, dict[str, MergeOptions]]:
    """The configured merge and the baselines, as engine options."""
    merge = config.merge
    common = dict(
        rank=merge.rank,
        density=merge.density,
        scale=merge.scale,
        svd=merge.svd,
        seed=config.run.seed,
        ridge=merge.ridge,
    )
    main = MergeOptions(strategy=merge.strategy, granularity=merge.granularity, **common)
    baselines = {}
    for name in merge.baselines:
        if name.startswith("co_merge_"):
            options = MergeOptions(strategy="co_merge", granularity=name.removeprefix("co_merge_"), **common)
        else:
            options = MergeOptions(
                strategy=name, **{**common, "rank": None if name == "concat" else merge.rank}
            )
        baselines[name] = options
    return main, baselines
