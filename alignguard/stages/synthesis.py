"""The synthesis stage: every planned pair rendered with one seed for both images, stored with
its training cache, ``<run>/synthesis/pairs.parquet`` and ``manifest.json`` last.

    pending shards ──► RenderShards (GPU) ──► WriteShards (CPU) ──► shard markers ──► seal
                       pipeline loaded once    PNG/JPEG/WebP + cache
                       per worker              + marker written last

The layout on disk is :mod:`alignguard.synthesis.store`'s; the plan is
:mod:`alignguard.synthesis.plan`'s. Identity: ``model``, ``data``, ``synthesis`` and ``run.seed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from alignguard.config.identity import SYNTHESIS_SECTIONS, section_config
from alignguard.config.schema import ExperimentConfig, ModelSection
from alignguard.data.schema import PromptPair
from alignguard.data.taxonomy import CATEGORIES
from alignguard.io import Manifest, RunDir, describe_outputs, write_manifest
from alignguard.stages.claim import PLAN_FILE
from alignguard.stages.sharded import Pool, ShardedStage, StageRun
from alignguard.synthesis.plan import Shard, plan_shards
from alignguard.synthesis.store import (
    EMPTY_PROMPT_CACHE,
    PAIRS_TABLE,
    read_markers,
    read_pairs_table,
    read_table,
    shard_is_complete,
    write_pairs_table,
    write_shard,
)

HELDOUT_TABLE = "heldout.parquet"


class RenderShards:
    """The render worker: the pipeline loaded once; one shard of pairs in, its arrays out."""

    def __init__(
        self, model: ModelSection, steps: int, guidance: float, cache_latents: bool, cache_dtype: str
    ) -> None:
        from alignguard.synthesis.render import PairRenderer

        self.renderer = PairRenderer(model, steps, guidance, cache_latents, cache_dtype)

    def __call__(self, shard: Shard) -> dict[str, np.ndarray]:
        return self.renderer.render(
            [p.unsafe_prompt for p in shard.pairs],
            [p.safe_prompt for p in shard.pairs],
            [p.seed for p in shard.pairs],
        )


class WriteShards:
    """The store worker: encodes and stores one rendered shard, marker last. Its imports are kept
    light (see ``alignguard.synthesis.store``): a warm pool of these starts fast."""

    def __init__(self, stage_uri: str, image_format: str, cache_dtype: str, model_id: str) -> None:
        self.stage = RunDir(stage_uri)
        self.options = (image_format, cache_dtype, model_id)

    def __call__(self, shard: Shard, rendered: dict[str, np.ndarray]) -> dict:
        return write_shard(self.stage, shard, rendered, *self.options)


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


class SynthesisStage(ShardedStage[Shard]):
    name = "synthesis"
    directory = "synthesis"
    sections = SYNTHESIS_SECTIONS
    shard_type = Shard

    @cached_property
    def split(self) -> tuple[list[PromptPair], list[PromptPair]]:
        """The configured pairs: (rendered, held out)."""
        from alignguard.synthesis.sources import train_test_pairs

        return train_test_pairs(self.config, self.run_dir)

    def plan(self) -> list[Shard]:
        return plan_shards(self.split[0], self.config.run.seed, self.config.synthesis.batch_size)

    def is_done(self, shard: Shard) -> bool:
        return shard_is_complete(self.stage_dir, shard)

    def renderer(self) -> Pool:
        synthesis = self.config.synthesis
        return Pool.sized_by(
            self.config.resources.synthesis,
            RenderShards,
            model=self.config.model,
            steps=synthesis.steps,
            guidance=synthesis.guidance,
            cache_latents=synthesis.cache_latents,
            cache_dtype=synthesis.cache_dtype,
        )

    def store(self) -> Pool:
        synthesis = self.config.synthesis
        kwargs = {
            "stage_uri": self.stage_dir.url(),
            "image_format": synthesis.image_format,
            "cache_dtype": synthesis.cache_dtype,
            "model_id": self.config.model.path,
        }
        return Pool(WriteShards, kwargs, size=synthesis.writers, num_cpus=synthesis.writer_cpus)

    @property
    def max_failed_shards(self) -> int:
        return self.config.synthesis.max_failed_shards

    def seal(self, shards: Sequence[Shard], key: str, seconds: float, prepared: Any = None) -> None:
        seal_synthesis(self.config, self.stage_dir, shards, self.split[1], key, seconds)

    def summarize(self, run: StageRun) -> SynthesisSummary:
        if run.already_complete:
            return summary_of_complete_stage(self.stage_dir)
        train, heldout = self.split
        summary = SynthesisSummary(
            pairs=len(train),
            per_category=category_counts(p.category for p in train),
            rendered_pairs=_pairs_in(run.pending) - _pairs_in(run.missing),
            skipped_pairs=_pairs_in(run.shards) - _pairs_in(run.pending),
            heldout_pairs=len(heldout),
            seconds=run.render_seconds,
            failed_shards=run.failed_shards,
            stage_uri=run.stage_uri,
        )
        if run.missing:
            summary.notes.append(
                f"  {len(run.missing)} shard(s) failed; run the same command again to finish them"
            )
        return summary


def seal_synthesis(
    config: ExperimentConfig,
    stage: RunDir,
    shards: Sequence[Shard],
    heldout: Sequence[PromptPair],
    key: str,
    seconds: float,
) -> None:
    """``pairs.parquet`` from the markers of ``shards``, the held-out table, then the manifest."""
    from alignguard.synthesis.sources import pair_table_bytes

    planned = {shard.shard_id for shard in shards}
    markers = [m for m in read_markers(stage) if m["shard_id"] in planned]
    count = write_pairs_table(stage, markers)
    stage.write_bytes(HELDOUT_TABLE, pair_table_bytes(heldout))
    outputs = [PAIRS_TABLE, HELDOUT_TABLE, PLAN_FILE] + [
        f"shards/shard-{m['shard_id']:05d}.json" for m in markers
    ]
    outputs += [m["cache"]["path"] for m in markers if m.get("cache")]
    if any(m.get("cache") for m in markers):
        outputs.append(EMPTY_PROMPT_CACHE)
    write_manifest(
        stage,
        Manifest(
            stage="synthesis",
            config=section_config(config, SYNTHESIS_SECTIONS),
            config_hash=key,
            outputs=describe_outputs(stage, outputs),
            seeds={"run": config.run.seed},
            timings={"render_and_write": seconds},
            summary={"pairs": count, "shards": len(markers)},
        ),
    )


def summary_of_complete_stage(stage: RunDir) -> SynthesisSummary:
    rows = read_pairs_table(stage)
    return SynthesisSummary(
        pairs=len(rows),
        per_category=category_counts(row["category"] for row in rows),
        rendered_pairs=0,
        skipped_pairs=len(rows),
        heldout_pairs=len(read_table(stage, HELDOUT_TABLE)),
        seconds=0.0,
        stage_uri=stage.uri,
        notes=["  the stage was already complete (manifest verified): nothing to do"],
    )


def category_counts(categories: Iterable[str]) -> dict[str, int]:
    counts = Counter(categories)
    return {category: counts.get(category, 0) for category in CATEGORIES}


def _pairs_in(shards: Sequence[Shard]) -> int:
    return sum(len(shard.pairs) for shard in shards)
