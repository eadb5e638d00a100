"""The merge stage: experts of a run → ``<run>/merged/`` (and ``<run>/merge_baselines/``).

Reads ``<run>/experts/<category>/pytorch_lora_weights.safetensors`` for every category in
``data.categories`` (each expert directory's manifest must verify). Writes:

- ``merged/pytorch_lora_weights.safetensors``: the configured strategy, diffusers format;
- ``merged/merge_report.json``: options, experts, calibration, summary and per-layer diagnostics;
- ``merged/calibration_stats.safetensors`` (Co-Merge): ``activation/…`` mean |x_j| and mean
  |(ΔW_i x)_o| per layer and expert, ``routed/…`` peaks, G and C of the token-wise merge, so a
  merge can be re-derived without re-running the UNet;
- ``merged/*.png``: winner share, sign conflicts, ΔW norms, SVD energy kept;
- ``merge_baselines/<name>/{pytorch_lora_weights.safetensors, merge_report.json}`` for every name
  in ``merge.baselines`` (same rank, density and scale), then ``merge_baselines/manifest.json``;
- ``merged/manifest.json`` last. A rerun with the same inputs and merge config is skipped.

``config_hash`` in these manifests is the merge's own key (``merge`` and ``model`` sections, run
seed, the experts' sha256): editing an unrelated section (evaluation, serve) keeps a merge valid,
retraining an expert invalidates it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

from tqdm.auto import tqdm

from alignguard.config.identity import identity_hash
from alignguard.config.schema import ExperimentConfig
from alignguard.io import (
    Manifest,
    RunDir,
    Timings,
    describe_outputs,
    save_tensors,
    sha256_bytes,
    stage_status,
    write_manifest,
)
from alignguard.merge import LayerMismatchError, collect_activation_stats, collect_routed_stats
from alignguard.merge.engine import MergeOptions, MergeResult, Stats, merge_experts
from alignguard.merge.lora_file import LoraFile, LoraFormatError, lora_file_bytes, read_lora_bytes
from alignguard.merge.plots import PLOT_NAMES, render_plots, render_refine_plot
from alignguard.merge.preflight import LORA_NAME, as_input_error, preflight, variants

REPORT_NAME = "merge_report.json"
STATS_NAME = "calibration_stats.safetensors"
MERGED_DIR = "merged"
BASELINES_DIR = "merge_baselines"


def load_experts(run: RunDir, paths: dict[str, str]) -> tuple[dict[str, LoraFile], dict[str, str]]:
    """Parsed experts and the sha256 of each file."""
    experts, hashes = {}, {}
    for name, rel in paths.items():
        data = run.read_bytes(rel)
        hashes[name] = sha256_bytes(data)
        with as_input_error(LoraFormatError):
            experts[name] = read_lora_bytes(data, source=run.url(rel))
    return experts, hashes


def stage_hash(config: ExperimentConfig, expert_hashes: dict[str, str]) -> str:
    """What the merge depends on: merge config, model, seed and the experts' bytes."""
    key = {
        "merge": config.merge.model_dump(mode="json"),
        "model": config.model.model_dump(mode="json"),
        "seed": config.run.seed,
        "experts": expert_hashes,
    }
    return identity_hash(key, spaced=True)


def _is_done(run: RunDir, config: ExperimentConfig, key: str) -> bool:
    done = stage_status(run.sub(MERGED_DIR), key).complete
    if config.merge.baselines:
        done &= stage_status(run.sub(BASELINES_DIR), key).complete
    return done


def _calibration_kinds(variants: list[MergeOptions]) -> list[str]:
    """Which statistics the variants need: ``activation`` (element/row) and/or ``routed`` (token)."""
    co_merges = [o for o in variants if o.strategy == "co_merge"]
    kinds = ["activation"] if any(not o.routed for o in co_merges) else []
    return kinds + (["routed"] if any(o.routed for o in co_merges) else [])


def _pick(stats: dict[str, Stats], options: MergeOptions) -> Stats | None:
    if options.strategy != "co_merge":
        return None
    return stats["routed" if options.routed else "activation"]


def calibrate(
    config: ExperimentConfig,
    run: RunDir,
    experts: dict[str, LoraFile],
    pipe,
    kinds: list[str],
    log: Callable,
) -> tuple[dict[str, Stats], dict]:
    """Build the calibration set with the configured provider and record the statistics of
    each kind in ``kinds`` (one UNet pass per expert for ``activation``, two for ``routed``)."""
    from alignguard.merge.providers import CalibrationUnavailable, select_provider

    with as_input_error(CalibrationUnavailable):
        source, provider = select_provider(config, run)
    data = provider(config, pipe, run)
    calibration = config.merge.calibration
    passes = {"activation": len(experts), "routed": 2}
    total = len(data) * calibration.timesteps * sum(passes[kind] for kind in kinds)
    log(f"calibration: {source}, {len(data)} prompts x {calibration.timesteps} timesteps, {'+'.join(kinds)}")
    common = dict(
        unet=pipe.unet,
        experts=experts,
        data=data,
        timesteps_per_sample=calibration.timesteps,
        seed=calibration.seed,
        batch_size=calibration.batch_size,
        scheduler_config=pipe.scheduler.config,
    )
    stats: dict[str, Stats] = {}
    with tqdm(total=total, desc="calibration", unit="sample") as bar, as_input_error(LayerMismatchError):
        if "activation" in kinds:
            stats["activation"] = collect_activation_stats(**common, on_batch=bar.update)
        if "routed" in kinds:
            stats["routed"] = collect_routed_stats(
                **common,
                threshold=config.merge.threshold,
                routing=config.merge.routing,
                on_batch=bar.update,
            )
    info = {
        "source": source,
        "prompts": len(data),
        "timesteps_per_prompt": calibration.timesteps,
        "seed": calibration.seed,
        "statistics": kinds,
    }
    if "activation" in stats:
        info["tokens"] = stats["activation"].tokens  # type: ignore[union-attr]
    if "routed" in stats:
        routed = stats["routed"].layers  # type: ignore[union-attr]
        info["threshold"] = config.merge.threshold
        info["routing"] = config.merge.routing
        info["unrouted_fraction"] = {
            name: round(layer.unrouted_fraction, 4) for name, layer in routed.items()
        }
    return stats, info


def _report(result: MergeResult, experts: dict[str, LoraFile], inputs: dict, calibration, seconds) -> dict:
    return {
        "label": result.options.label,
        "options": asdict(result.options),
        "experts": {
            name: {
                "file": inputs[name]["file"],
                "sha256": inputs[name]["sha256"],
                "layers": len(expert.layers),
                "ranks": sorted(set(expert.ranks.values())),
                "scales": sorted({layer.scale for layer in expert.layers.values()}),
            }
            for name, expert in experts.items()
        },
        "calibration": calibration,
        "summary": result.summary(),
        "seconds": round(seconds, 3),
        "layers": [d.to_json() for d in result.diagnostics],
    }


def _merge_and_write(
    stage: RunDir, experts, options, stats, device, report_extra: tuple, plots: bool, refine=None
) -> tuple[list[str], dict]:
    """Merge, optionally refine (``refine``: factors -> (factors, report)), write file + report."""
    start = time.perf_counter()
    with tqdm(
        total=len({n for e in experts.values() for n in e.layers}), desc=options.label, unit="layer"
    ) as bar:
        result = merge_experts(
            experts, options, _pick(stats, options), device, on_layer=lambda _: bar.update()
        )
    report = _report(result, experts, *report_extra, time.perf_counter() - start)
    factors = result.file_factors()
    if refine is not None:
        factors, report["refine"] = refine(factors)
        report["summary"]["refine"] = {k: report["refine"][k] for k in ("before", "after")}
    stage.write_bytes(LORA_NAME, lora_file_bytes(factors))
    stage.write_json(REPORT_NAME, report)
    written = [LORA_NAME, REPORT_NAME]
    if plots:
        rendered = render_plots(result.diagnostics, result.experts, options.label)
        if "refine" in report and report["refine"]["history"]:
            rendered["refine.png"] = render_refine_plot(report["refine"], options.label)
        for name, png in rendered.items():
            if png is not None:
                stage.write_bytes(name, png)
                written.append(name)
        for stale in sorted(PLOT_NAMES - set(written)):  # an earlier merge's plot is not this one's
            if stage.exists(stale):
                stage.remove(stale)
    return written, report["summary"]


def _write_baselines(stage: RunDir, baselines: dict, merge_args: tuple, manifest_common: dict) -> None:
    """Every baseline into ``<name>/``, then one manifest for the directory."""
    experts, stats, device, extra = merge_args
    timings, written, summaries = Timings(), [], {}
    for name, options in baselines.items():
        with timings.measure(name):
            files, summaries[name] = _merge_and_write(
                stage.sub(name), experts, options, stats, device, extra, False
            )
        written += [f"{name}/{f}" for f in files]
    manifest = Manifest(
        stage="merge_baselines",
        outputs=describe_outputs(stage, written),
        timings=timings.seconds,
        summary=summaries,
        **manifest_common,
    )
    write_manifest(stage, manifest)


def _refiner(config: ExperimentConfig, run: RunDir, pipe, experts, device, timings: Timings, log):
    """``factors -> (refined factors, report)`` distilling the experts end to end (refine.py)."""
    from alignguard.merge.refine import RefineOptions, refine_data, refine_factors
    from alignguard.synthesis.store import load_pair_cache

    section = config.merge.refine
    options = RefineOptions(**section.model_dump())
    with as_input_error(FileNotFoundError, ValueError):
        data = refine_data(load_pair_cache(run.sub("synthesis")), list(experts))

    def refine(factors):
        log(f"refine: distilling {len(experts)} experts into the merged LoRA, {section.steps} steps")
        with timings.measure("refine"), tqdm(total=section.steps, desc="refine", unit="step") as bar:
            refined, report = refine_factors(
                pipe.unet,
                pipe.scheduler,
                data,
                experts,
                factors,
                options,
                device,
                on_step=lambda _: bar.update(),
            )
        before, after = report["before"], report["after"]
        log(
            f"refine: min retention {before['min_retention']:.3f} -> {after['min_retention']:.3f}, "
            f"drift {before['drift']:.4f} -> {after['drift']:.4f}"
        )
        return refined, report

    return refine


def run_merge_stage(
    config: ExperimentConfig, force: bool = False, log: Callable[[str], None] = print
) -> dict:
    """Run (or skip, when already complete for these inputs) the merge stage; returns a summary."""
    run, timings = RunDir(config.run.output_dir), Timings()
    with timings.measure("load_experts"):
        paths = preflight(run, config)
        experts, hashes = load_experts(run, paths)
    key = stage_hash(config, hashes)
    if not force and _is_done(run, config, key):
        log(f"merge: {run.url(MERGED_DIR)} is complete for these experts and config; skipping")
        return {"skipped": True, **run.sub(MERGED_DIR).read_json("manifest.json")["summary"]}
    from alignguard.models import resolve_device

    device = resolve_device(config.model.device)
    main, baselines = variants(config)
    stats: dict[str, Stats] = {}
    calibration = None
    kinds = _calibration_kinds([main, *baselines.values()])
    pipe = None
    if kinds or config.merge.refine.steps:
        from alignguard.families import load_pipeline

        pipe = load_pipeline(config.model, device=device)
    if kinds:
        with timings.measure("calibration"):
            stats, calibration = calibrate(config, run, experts, pipe, kinds, log)
    inputs = {n: {"file": paths[n], "sha256": hashes[n]} for n in experts}
    extra = (inputs, calibration)
    manifest_common = dict(
        config=config.model_dump(mode="json"),
        config_hash=key,
        inputs={paths[n]: hashes[n] for n in experts},
        seeds={"run": config.run.seed, "calibration": config.merge.calibration.seed},
    )
    if baselines:
        _write_baselines(run.sub(BASELINES_DIR), baselines, (experts, stats, device, extra), manifest_common)
    stage = run.sub(MERGED_DIR)
    refine = _refiner(config, run, pipe, experts, device, timings, log) if config.merge.refine.steps else None
    with timings.measure(f"merge_{main.label}"):
        written, summary = _merge_and_write(stage, experts, main, stats, device, extra, True, refine)
    if stats:
        save_tensors(
            stage, STATS_NAME, {f"{k}/{n}": t for k, v in stats.items() for n, t in v.tensors().items()}
        )
        written.append(STATS_NAME)
    summary = {"label": main.label, "experts": list(experts), **summary}
    write_manifest(
        stage,
        Manifest(
            stage="merge",
            outputs=describe_outputs(stage, written),
            timings=timings.seconds,
            summary=summary,
            **manifest_common,
        ),
    )
    log(f"merge: wrote {run.url(MERGED_DIR, LORA_NAME)} ({main.label})")
    return {"skipped": False, **summary}
