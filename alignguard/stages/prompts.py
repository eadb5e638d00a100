"""The prompt stage for ``data.source: llm``: an LLM writes prompt pairs, ``<run>/prompts/``.

    request shards ──► WritePairs (GPU) ──► shard markers ──► seal: dedup across shards,
    (category, concept,  model loaded once,   (stored in the      pairs.parquet, manifest.json
     index) x batch      JSON-constrained      same worker)
                         generation

A shard is ``synthesis.llm.batch_size`` requests, one generation batch (its sampling seeds derive
from its first request). Identity: ``data``, ``synthesis`` and ``run.seed``; the directory is not
claimed (a changed config writes it anew: each marker carries its shard's key, so stale ones are
rewritten). The synthesis stage reads ``pairs.parquet`` (``alignguard.synthesis.sources``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from alignguard.config.identity import identity_hash, section_config
from alignguard.config.schema import ExperimentConfig
from alignguard.data.schema import PromptPair
from alignguard.data.taxonomy import normalize_category
from alignguard.io import Manifest, RunDir, describe_outputs, stage_status, write_manifest
from alignguard.stages.sharded import Pool, ShardedStage, StageRun
from alignguard.synthesis.llm import PairRequest, WriteStats, dedup_by_unsafe_prompt

SECTIONS = ("data", "synthesis")
PAIRS_TABLE = "pairs.parquet"
DEFAULT_CONCEPTS = Path(__file__).resolve().parents[1] / "synthesis" / "concepts.yaml"


def load_concepts(path: str | None) -> dict[str, list[str]]:
    """category -> concepts from a YAML file (categories normalised, e.g. ``Self-harm``)."""
    source = Path(path) if path else DEFAULT_CONCEPTS
    raw = yaml.safe_load(source.read_text())
    if not isinstance(raw, dict) or not all(isinstance(v, list) for v in raw.values()):
        raise ValueError(f"{source}: expected a mapping of category -> list of concepts")
    return {normalize_category(category): [str(c) for c in concepts] for category, concepts in raw.items()}


def plan_requests(config: ExperimentConfig) -> list[PairRequest]:
    concepts = load_concepts(config.synthesis.llm.concepts)
    return [
        PairRequest(category, concept, index)
        for category in config.data.categories
        for concept in concepts.get(category, [])
        for index in range(config.synthesis.llm.prompts_per_concept)
    ]


@dataclass(frozen=True)
class RequestShard:
    shard_id: int
    requests: tuple[PairRequest, ...]
    key: str  # the stage's identity and these requests: a marker with another key is stale

    @property
    def marker(self) -> str:
        return f"shards/shard-{self.shard_id:05d}.json"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "requests": [asdict(r) for r in self.requests]})

    @classmethod
    def from_json(cls, text: str) -> RequestShard:
        data = json.loads(text)
        requests = tuple(PairRequest(**r) for r in data["requests"])
        return cls(int(data["shard_id"]), requests, data["key"])


class WritePairs:
    """The render worker: the LLM loaded once; one shard of requests in, its pairs and stats out."""

    def __init__(self, llm: dict, seed: int) -> None:
        from alignguard.synthesis.llm import LLMPairWriter

        self.writer = LLMPairWriter(
            llm["path"],
            llm["max_new_tokens"],
            llm["temperature"],
            llm["max_retries"],
            llm["max_prompt_words"],
            seed,
        )

    def __call__(self, shard: RequestShard) -> dict[str, Any]:
        pairs, stats = self.writer.write(shard.requests)
        rows = [[p.pair_id, p.unsafe_prompt, p.safe_prompt, p.category, p.concept] for p in pairs]
        return {"pairs": rows, "stats": asdict(stats)}


class StorePairs:
    """The store (run inside the writer's actor: a marker is too small for a pool of its own)."""

    def __init__(self, stage_uri: str) -> None:
        self.stage = RunDir(stage_uri)

    def __call__(self, shard: RequestShard, outputs: dict[str, Any]) -> dict:
        self.stage.write_json(shard.marker, {"key": shard.key, **outputs})
        return {"shard_id": shard.shard_id, "pairs": len(outputs["pairs"])}


class PromptStage(ShardedStage[RequestShard]):
    name = "prompts"
    directory = "prompts"
    sections = SECTIONS
    claims_directory = False
    shard_type = RequestShard
    stats: WriteStats  # summed over every shard, once sealed

    def is_sealed(self, key: str) -> bool:
        return stage_status(self.stage_dir, key, verify_hashes=True).complete  # one small table

    def plan(self) -> list[RequestShard]:
        requests = plan_requests(self.config)
        if not requests:
            raise ValueError("no prompt requests: check data.categories against the concepts YAML")
        size, key = self.config.synthesis.llm.batch_size, self.key()
        chunks = [tuple(requests[start : start + size]) for start in range(0, len(requests), size)]
        return [
            RequestShard(i, chunk, identity_hash({"stage": key, "requests": [asdict(r) for r in chunk]}))
            for i, chunk in enumerate(chunks)
        ]

    def is_done(self, shard: RequestShard) -> bool:
        if not self.stage_dir.exists(shard.marker):
            return False
        try:
            return self.stage_dir.read_json(shard.marker).get("key") == shard.key
        except ValueError:
            return False

    def renderer(self) -> Pool:
        llm = self.config.synthesis.llm.model_dump(mode="json")
        return Pool.sized_by(self.config.resources.prompts, WritePairs, llm=llm, seed=self.config.run.seed)

    def store(self) -> Pool:
        return Pool(StorePairs, {"stage_uri": self.stage_dir.url()}, inline=True)

    def seal(self, shards: Sequence[RequestShard], key: str, seconds: float, prepared: Any = None) -> None:
        from alignguard.synthesis.sources import pair_table_bytes

        requested = sum(len(shard.requests) for shard in shards)
        pairs, self.stats = gather([self.stage_dir.read_json(s.marker) for s in shards], requested)
        self.stage_dir.write_bytes(PAIRS_TABLE, pair_table_bytes(pairs))
        write_manifest(
            self.stage_dir,
            Manifest(
                stage=self.name,
                config=section_config(self.config, SECTIONS),
                config_hash=key,
                outputs=describe_outputs(self.stage_dir, [PAIRS_TABLE]),
                seeds={"run": self.config.run.seed},
                summary=asdict(self.stats),
            ),
        )

    def summarize(self, run: StageRun) -> PromptSummary:
        if run.already_complete:
            written = self.stage_dir.read_json("manifest.json")["summary"]["written"]
            return PromptSummary(WriteStats(written=written), run.stage_uri, skipped=True)
        if run.missing:  # only with max_failed_shards > 0; synthesis cannot start without the table
            raise RuntimeError(f"prompts: {run.failed_shards} shard(s) failed; run the same command again")
        return PromptSummary(self.stats, run.stage_uri)


def gather(markers: list[dict], requested: int) -> tuple[list[PromptPair], WriteStats]:
    """Every shard's pairs, sorted by id and deduplicated across shards, and the summed stats."""
    pairs: list[PromptPair] = []
    total = WriteStats(requested=requested)
    for marker in markers:
        for name in ("retried", "dropped_malformed", "dropped_filtered"):
            setattr(total, name, getattr(total, name) + marker["stats"][name])
        for pair_id, unsafe, safe, category, concept in marker["pairs"]:
            pairs.append(PromptPair(pair_id, unsafe, safe, (category,), concept=concept, source="llm"))
    pairs.sort(key=lambda p: p.pair_id)
    pairs, total.dropped_duplicate = dedup_by_unsafe_prompt(pairs)
    total.written = len(pairs)
    return pairs, total


@dataclass
class PromptSummary:
    stats: WriteStats
    stage_uri: str
    skipped: bool = False
    failed_shards: int = 0

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"prompts: {self.stats.written} pairs already written in {self.stage_uri}: nothing to do"]
        s = self.stats
        return [
            f"prompts: {s.written} of {s.requested} requested pairs written to {self.stage_uri}",
            f"  retried {s.retried}; dropped: malformed {s.dropped_malformed}, "
            f"filtered {s.dropped_filtered}, duplicate {s.dropped_duplicate}",
        ]
