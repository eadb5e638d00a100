"""Pair synthesis on Ray: the synthesis stage (``alignguard.stages.synthesis``) on the
sharded-stage runner (``cluster.stages``), after the LLM prompt stage for ``data.source: llm``.

Shards of pairs stream through a renderer actor pool, then through a writer pool, so image
encoding and storage overlap with generation instead of blocking it. A crashed job is resumed by
running it again, which renders only the shards without a valid marker; a rerun of a finished
stage is a no-op. Also here: importing a Pick-a-Pic-layout table as a synthesis stage.
"""

from __future__ import annotations

import time

import numpy as np

from alignguard.config.identity import SYNTHESIS_SECTIONS, sections_hash
from alignguard.config.schema import ExperimentConfig
from alignguard.io import RunDir
from alignguard.stages.claim import PLAN_FILE, StageConflictError, claim_directory
from alignguard.stages.prompts import PromptStage
from alignguard.stages.synthesis import SynthesisStage, SynthesisSummary, category_counts, seal_synthesis
from alignguard.synthesis.plan import Shard
from alignguard.synthesis.store import write_shard
from cluster.stages import run_sharded_stage


def run_synthesis(config: ExperimentConfig) -> SynthesisSummary:
    """Render every planned pair that is not yet complete, then seal the stage with its manifest.

    With ``data.source: llm`` the prompt stage runs first (and is itself skipped when complete)."""
    notes = run_sharded_stage(PromptStage(config)).lines() if config.data.source == "llm" else []
    summary = run_sharded_stage(SynthesisStage(config))
    summary.notes[:0] = notes
    return summary


def import_pickapic_stage(
    config: ExperimentConfig, table_path: str, category: str | None = None
) -> SynthesisSummary:
    """Build ``<run>/synthesis/`` from a Pick-a-Pic-layout table instead of rendering.

    Images are resized to ``model.resolution`` if needed; the training cache is encoded with the
    configured model in this process. Each row becomes one pair (see ``alignguard.synthesis.interop``).
    """
    from alignguard.families import load_pipeline
    from alignguard.synthesis.interop import read_pickapic
    from alignguard.synthesis.render import encode_prompts

    stage = RunDir(config.run.output_dir).sub(SynthesisStage.directory)
    if stage.exists("manifest.json") or stage.exists(PLAN_FILE):
        raise StageConflictError(
            f"{stage.uri} already holds a synthesis stage; import into a new run.output_dir"
        )
    with open(table_path, "rb") as handle:
        preferences = list(read_pickapic(handle.read(), table_path))
    start = time.perf_counter()
    pipe = load_pipeline(config.model)
    resolution, size, key = config.model.resolution, config.synthesis.batch_size, sections_hash(config)
    planned = _imported_pairs(preferences, category, table_path)
    shards = [Shard(i, tuple(planned[s : s + size])) for i, s in enumerate(range(0, len(planned), size))]
    claim_directory(stage, "synthesis", key, SYNTHESIS_SECTIONS, {"imported_from": table_path})
    empty = {k: v.numpy() for k, v in encode_prompts(pipe, [""], resolution).items() if k != "time_ids"}
    for shard, offset in zip(shards, range(0, len(planned), size), strict=True):
        rendered = _imported_tensors(pipe, preferences[offset : offset + size], resolution)
        rendered.update({f"empty_{k}": v for k, v in empty.items()})
        synthesis = config.synthesis
        write_shard(stage, shard, rendered, synthesis.image_format, synthesis.cache_dtype, config.model.path)
    seconds = time.perf_counter() - start
    seal_synthesis(config, stage, shards, [], key, seconds)
    return SynthesisSummary(
        pairs=len(planned),
        per_category=category_counts(p.category for p in planned),
        rendered_pairs=len(planned),
        skipped_pairs=0,
        heldout_pairs=0,
        seconds=seconds,
        stage_uri=stage.uri,
        notes=[
            f"  imported from {table_path} (each row one pair; train with training.strategy=unsafe_prompt)"
        ],
    )


def _imported_pairs(preferences: list, category: str | None, table_path: str) -> list:
    """One planned pair per row, both prompts its caption, labelled by its category column (or
    ``category``)."""
    from alignguard.data.taxonomy import normalize_category
    from alignguard.synthesis.plan import PlannedPair

    planned = []
    for pref in preferences:
        label = pref.category or category
        if label is None:
            raise ValueError(f"{table_path}: no category column; pass --category")
        planned.append(
            PlannedPair(pref.row_id, pref.caption, pref.caption, (normalize_category(label),), None, 0)
        )
    return planned


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
