"""Pair synthesis on Ray Data: shards of pairs stream through a renderer actor pool, then through
writer tasks, so image encoding and storage overlap with generation instead of blocking it.

    pending shards ──► PairRenderer actors (GPU) ──► write_shard tasks (CPU) ──► shard markers
                        pipeline loaded once            PNG/JPEG/WebP + cache
                        per actor                       + marker written last

Faults: Ray Data restarts a killed renderer actor and retries its in-flight shard (actor pools
default to ``max_restarts=-1``, ``max_task_retries=-1``); a crashed job is resumed by running it
again, which renders only the shards without a valid marker. A finished stage gets its
``manifest.json`` last; a rerun of a finished stage is a no-op.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import ray

from alignguard.config.schema import ExperimentConfig
from alignguard.data.taxonomy import CATEGORIES
from alignguard.io import Manifest, RunDir, describe_outputs, read_manifest, stage_status, write_manifest
from alignguard.synthesis.plan import Shard, plan_shards
from alignguard.synthesis.render import PairRenderer
from alignguard.synthesis.sources import pair_table_bytes, train_test_pairs
from alignguard.synthesis.stage import StageConflictError, stage_config, stage_config_hash
from alignguard.synthesis.store import (
    PAIRS_TABLE,
    read_markers,
    read_pairs_table,
    read_table,
    shard_is_complete,
    write_pairs_table,
    write_shard,
)
from cluster.runtime import init_ray

STAGE = "synthesis"
PLAN_FILE = "plan.json"
HELDOUT_TABLE = "heldout.parquet"


class RenderShards:
    """Ray Data UDF: one batch = one shard (a JSON row); the pipeline is loaded once per actor."""

    def __init__(
        self, model_json: str, steps: int, guidance: float, cache_latents: bool, cache_dtype: str
    ) -> None:
        from alignguard.config.schema import ModelSection

        self.renderer = PairRenderer(
            ModelSection.model_validate_json(model_json), steps, guidance, cache_latents, cache_dtype
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard = Shard.from_json(str(batch["shard"][0]))
        rendered = self.renderer.render(
            [p.unsafe_prompt for p in shard.pairs],
            [p.safe_prompt for p in shard.pairs],
            [p.seed for p in shard.pairs],
        )
        return {"shard": batch["shard"], **{name: array[None] for name, array in rendered.items()}}


class WriteShards:
    """Ray Data UDF on a small warm actor pool: encode and store one rendered shard, marker last.

    An actor rather than tasks: a fresh task worker per shard would pay Python start-up on
    every shard, and its imports are kept light (see ``alignguard.synthesis.store``)."""

    def __init__(self, stage_uri: str, image_format: str, cache_dtype: str, model_id: str) -> None:
        self.stage = RunDir(stage_uri)
        self.options = (image_format, cache_dtype, model_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard = Shard.from_json(str(batch["shard"][0]))
        rendered = {name: array[0] for name, array in batch.items() if name != "shard"}
        summary = write_shard(self.stage, shard, rendered, *self.options)
        return {name: np.array([value]) for name, value in summary.items()}


@dataclass
class SynthesisSummary:
    pairs: int
    per_category: dict[str, int]
    rendered_pairs: int
    skipped_pairs: int
    heldout_pairs: int
    seconds: float
    failed_shards: int = 0
    stage_uri: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def pairs_per_second(self) -> float:
        return self.rendered_pairs / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        counts = ", ".join(f"{c} {n}" for c, n in self.per_category.items() if n)
        rate = f"{self.pairs_per_second:.2f} pairs/s" if self.rendered_pairs else "nothing to render"
        return [
            f"synthesis: {self.pairs} pairs in {self.stage_uri} ({counts})",
            f"  this run: rendered {self.rendered_pairs}, already complete {self.skipped_pairs}, "
            f"failed shards {self.failed_shards}; {rate} over {self.seconds:.1f} s",
            f"  held-out pairs (not rendered): {self.heldout_pairs}",
            *self.notes,
        ]


def run_synthesis(config: ExperimentConfig) -> SynthesisSummary:
    """Render every planned pair that is not yet complete, then seal the stage with its manifest.

    With ``data.source: llm`` the prompt stage runs first (and is itself skipped when complete)."""
    notes = []
    if config.data.source == "llm":
        from cluster.prompts import run_prompt_stage

        notes = run_prompt_stage(config).lines()
    run_dir = RunDir(config.run.output_dir)
    stage = run_dir.sub(STAGE)
    config_hash = stage_config_hash(config)
    existing = read_manifest(stage) if stage.exists("manifest.json") else None
    if existing is not None and stage_status(stage, config_hash, verify_hashes=False).complete:
        summary = _summary_of_complete_stage(stage, existing)
        summary.notes[:0] = notes
        return summary
    _claim_plan(stage, config_hash)
    train, heldout = train_test_pairs(config, run_dir)
    shards = plan_shards(train, config.run.seed, config.synthesis.batch_size)
    pending = [shard for shard in shards if not shard_is_complete(stage, shard)]
    start = time.perf_counter()
    if pending:
        _render(config, stage, pending)
    seconds = time.perf_counter() - start
    missing = [shard for shard in pending if not shard_is_complete(stage, shard)]
    summary = SynthesisSummary(
        pairs=len(train),
        per_category=_category_counts(p.category for p in train),
        rendered_pairs=sum(len(s.pairs) for s in pending) - sum(len(s.pairs) for s in missing),
        skipped_pairs=sum(len(s.pairs) for s in shards) - sum(len(s.pairs) for s in pending),
        heldout_pairs=len(heldout),
        seconds=seconds,
        failed_shards=len(missing),
        stage_uri=stage.uri,
        notes=notes,
    )
    if missing:
        summary.notes.append(f"  {len(missing)} shard(s) failed; run the same command again to finish them")
        return summary
    _seal(config, stage, shards, heldout, config_hash, seconds)
    return summary


def _claim_plan(stage: RunDir, config_hash: str) -> None:
    """Refuse to mix outputs of two configs in one stage directory."""
    if stage.exists(PLAN_FILE):
        claimed = stage.read_json(PLAN_FILE).get("config_hash")
        if claimed != config_hash:
            raise StageConflictError(
                f"{stage.uri} holds synthesis outputs of a different config (model, data, synthesis or "
                "run.seed changed). Use a new run.output_dir, or delete that directory to start over."
            )
    else:
        stage.write_json(PLAN_FILE, {"config_hash": config_hash})


def _render(config: ExperimentConfig, stage: RunDir, pending: list[Shard]) -> None:
    init_ray()
    resources = config.resources.synthesis
    context = ray.data.DataContext.get_current()
    context.max_errored_blocks = config.synthesis.max_failed_shards
    rows = [{"shard": shard.to_json()} for shard in pending]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    rendered = dataset.map_batches(
        RenderShards,
        fn_constructor_kwargs={
            "model_json": config.model.model_dump_json(),
            "steps": config.synthesis.steps,
            "guidance": config.synthesis.guidance,
            "cache_latents": config.synthesis.cache_latents,
            "cache_dtype": config.synthesis.cache_dtype,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=resources.concurrency),
        num_gpus=resources.num_gpus,
        num_cpus=resources.num_cpus,
    )
    written = rendered.map_batches(
        WriteShards,
        fn_constructor_kwargs={
            "stage_uri": stage.url(),
            "image_format": config.synthesis.image_format,
            "cache_dtype": config.synthesis.cache_dtype,
            "model_id": config.model.path,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=config.synthesis.writers),
        num_cpus=config.synthesis.writer_cpus,
    )
    for _ in written.iter_rows():  # streams; Ray Data draws the progress bars
        pass


def _seal(config, stage: RunDir, shards: list[Shard], heldout, config_hash: str, seconds: float) -> None:
    planned = {shard.shard_id for shard in shards}
    markers = [m for m in read_markers(stage) if m["shard_id"] in planned]
    count = write_pairs_table(stage, markers)
    stage.write_bytes(HELDOUT_TABLE, pair_table_bytes(heldout))
    outputs = [PAIRS_TABLE, HELDOUT_TABLE, PLAN_FILE] + [
        f"shards/shard-{m['shard_id']:05d}.json" for m in markers
    ]
    outputs += [m["cache"]["path"] for m in markers if m.get("cache")]
    if any(m.get("cache") for m in markers):
        outputs.append("cache/empty_prompt.safetensors")
    write_manifest(
        stage,
        Manifest(
            stage=STAGE,
            config=stage_config(config),
            config_hash=config_hash,
            outputs=describe_outputs(stage, outputs),
            seeds={"run": config.run.seed},
            timings={"render_and_write": seconds},
            summary={"pairs": count, "shards": len(markers)},
        ),
    )


def _summary_of_complete_stage(stage: RunDir, manifest: dict) -> SynthesisSummary:
    rows = read_pairs_table(stage)
    heldout = len(read_table(stage, HELDOUT_TABLE))
    return SynthesisSummary(
        pairs=len(rows),
        per_category=_category_counts(row["category"] for row in rows),
        rendered_pairs=0,
        skipped_pairs=len(rows),
        heldout_pairs=heldout,
        seconds=0.0,
        stage_uri=stage.uri,
        notes=["  the stage was already complete (manifest verified): nothing to do"],
    )


def _category_counts(categories) -> dict[str, int]:
    counts = Counter(categories)
    return {category: counts.get(category, 0) for category in CATEGORIES}


def import_pickapic_stage(
    config: ExperimentConfig, table_path: str, category: str | None = None
) -> SynthesisSummary:
    """Build ``<run>/synthesis/`` from a Pick-a-Pic-layout table instead of rendering.

    Images are resized to ``model.resolution`` if needed; the training cache is encoded with the
    configured model in this process. Each row becomes one pair (see ``alignguard.synthesis.interop``).
    """
    from alignguard.data.taxonomy import normalize_category
    from alignguard.families import load_pipeline
    from alignguard.synthesis.interop import read_pickapic
    from alignguard.synthesis.plan import PlannedPair
    from alignguard.synthesis.render import encode_prompts

    stage = RunDir(config.run.output_dir).sub(STAGE)
    if stage.exists("manifest.json") or stage.exists(PLAN_FILE):
        raise StageConflictError(
            f"{stage.uri} already holds a synthesis stage; import into a new run.output_dir"
        )
    with open(table_path, "rb") as handle:
        preferences = list(read_pickapic(handle.read(), table_path))
    start = time.perf_counter()
    pipe = load_pipeline(config.model)
    resolution = config.model.resolution
    planned = []
    for pref in preferences:
        label = pref.category or category
        if label is None:
            raise ValueError(f"{table_path}: no category column; pass --category")
        planned.append(
            PlannedPair(pref.row_id, pref.caption, pref.caption, (normalize_category(label),), None, 0)
        )
    size = config.synthesis.batch_size
    shards = [Shard(i, tuple(planned[s : s + size])) for i, s in enumerate(range(0, len(planned), size))]
    stage.write_json(PLAN_FILE, {"config_hash": stage_config_hash(config), "imported_from": table_path})
    empty = {k: v.numpy() for k, v in encode_prompts(pipe, [""], resolution).items() if k != "time_ids"}
    for shard, offset in zip(shards, range(0, len(planned), size), strict=True):
        rendered = _imported_tensors(pipe, preferences[offset : offset + size], resolution)
        rendered.update({f"empty_{k}": v for k, v in empty.items()})
        write_shard(
            stage,
            shard,
            rendered,
            config.synthesis.image_format,
            config.synthesis.cache_dtype,
            config.model.path,
        )
    seconds = time.perf_counter() - start
    _seal(config, stage, shards, [], stage_config_hash(config), seconds)
    return SynthesisSummary(
        pairs=len(planned),
        per_category=_category_counts(p.category for p in planned),
        rendered_pairs=len(planned),
        skipped_pairs=0,
        heldout_pairs=0,
        seconds=seconds,
        stage_uri=stage.uri,
        notes=[
            f"  imported from {table_path} (each row one pair; train with training.strategy=unsafe_prompt)"
        ],
    )


def _imported_tensors(pipe, chunk: list, resolution: int) -> dict[str, np.ndarray]:
    """One imported shard in the renderer's layout: both images (preferred = safe), their
    latents, and the caption's embeddings on both sides (Pick-a-Pic pairs share one prompt)."""
    from alignguard.synthesis.render import encode_images, encode_prompts

    safe = np.stack([_resize(p.preferred, resolution) for p in chunk])
    unsafe = np.stack([_resize(p.rejected, resolution) for p in chunk])
    latents = encode_images(pipe, np.concatenate([unsafe, safe])).numpy()
    rendered = {
        "unsafe_images": unsafe,
        "safe_images": safe,
        "latents_unsafe": latents[: len(chunk)],
        "latents_safe": latents[len(chunk) :],
    }
    for name, tensor in encode_prompts(pipe, [p.caption for p in chunk], resolution).items():
        if name == "time_ids":
            rendered["time_ids"] = tensor.numpy()
        else:
            rendered[f"{name}_unsafe"] = rendered[f"{name}_safe"] = tensor.numpy()
    return rendered


def _resize(image: np.ndarray, resolution: int) -> np.ndarray:
    if image.shape[:2] == (resolution, resolution):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.BICUBIC))
