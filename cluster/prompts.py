"""The prompt stage for ``data.source: llm``: an LLM writes prompt pairs on a Ray Data actor pool.

Requests (category, concept, index) stream through ``LLMPairWriter`` actors (the model loaded
once per actor, GPUs per actor from ``resources.prompts``); the driver merges their pairs,
dedups them across batches and writes ``<run>/prompts/pairs.parquet`` and its manifest. A finished
stage is a no-op on rerun; an interrupted one starts over (it is cheap next to image synthesis).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import ray
import yaml

from alignguard.config.schema import ExperimentConfig
from alignguard.data.schema import PromptPair
from alignguard.data.taxonomy import normalize_category
from alignguard.io import Manifest, RunDir, describe_outputs, stage_status, write_manifest
from alignguard.synthesis.llm import LLMPairWriter, PairRequest, WriteStats, dedup_by_unsafe_prompt
from alignguard.synthesis.sources import pair_table_bytes
from alignguard.synthesis.stage import stage_config, stage_config_hash
from cluster.runtime import init_ray

STAGE = "prompts"
SECTIONS = ("data", "synthesis")
DEFAULT_CONCEPTS = Path(__file__).resolve().parents[1] / "alignguard" / "synthesis" / "concepts.yaml"


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


class WritePairs:
    """Ray Data UDF: a batch of requests in, one row (pairs + stats as JSON) out."""

    def __init__(self, llm_json: str, seed: int) -> None:
        llm = json.loads(llm_json)
        self.writer = LLMPairWriter(
            llm["path"],
            llm["max_new_tokens"],
            llm["temperature"],
            llm["max_retries"],
            llm["max_prompt_words"],
            seed,
        )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        requests = [
            PairRequest(str(c), str(k), int(i))
            for c, k, i in zip(batch["category"], batch["concept"], batch["index"], strict=True)
        ]
        pairs, stats = self.writer.write(requests)
        payload = [[p.pair_id, p.unsafe_prompt, p.safe_prompt, p.category, p.concept] for p in pairs]
        return {"pairs": np.array([json.dumps(payload)]), "stats": np.array([json.dumps(asdict(stats))])}


@dataclass
class PromptSummary:
    stats: WriteStats
    stage_uri: str
    skipped: bool = False

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"prompts: {self.stats.written} pairs already written in {self.stage_uri}: nothing to do"]
        s = self.stats
        return [
            f"prompts: {s.written} of {s.requested} requested pairs written to {self.stage_uri}",
            f"  retried {s.retried}; dropped: malformed {s.dropped_malformed}, "
            f"filtered {s.dropped_filtered}, duplicate {s.dropped_duplicate}",
        ]


def run_prompt_stage(config: ExperimentConfig) -> PromptSummary:
    stage = RunDir(config.run.output_dir).sub(STAGE)
    config_hash = stage_config_hash(config, SECTIONS)
    if stage_status(stage, config_hash, verify_hashes=True).complete:
        written = stage.read_json("manifest.json")["summary"]["written"]
        return PromptSummary(WriteStats(written=written), stage.uri, skipped=True)
    requests = plan_requests(config)
    if not requests:
        raise ValueError("no prompt requests: check data.categories against the concepts YAML")
    init_ray()
    resources = config.resources.prompts
    dataset = ray.data.from_items(
        [{"category": r.category, "concept": r.concept, "index": r.index} for r in requests]
    )
    outputs = dataset.map_batches(
        WritePairs,
        fn_constructor_kwargs={"llm_json": config.synthesis.llm.model_dump_json(), "seed": config.run.seed},
        batch_size=config.synthesis.llm.batch_size,
        compute=ray.data.ActorPoolStrategy(size=resources.concurrency),
        num_gpus=resources.num_gpus,
        num_cpus=resources.num_cpus,
    )
    pairs, stats = _gather(outputs.iter_rows(), len(requests))
    stage.write_bytes("pairs.parquet", pair_table_bytes(pairs))
    write_manifest(
        stage,
        Manifest(
            stage=STAGE,
            config=stage_config(config, SECTIONS),
            config_hash=config_hash,
            outputs=describe_outputs(stage, ["pairs.parquet"]),
            seeds={"run": config.run.seed},
            summary=asdict(stats),
        ),
    )
    return PromptSummary(stats, stage.uri)


def _gather(rows, requested: int) -> tuple[list[PromptPair], WriteStats]:
    pairs: list[PromptPair] = []
    total = WriteStats(requested=requested)
    for row in rows:
        batch_stats = json.loads(row["stats"])
        for name in ("retried", "dropped_malformed", "dropped_filtered"):
            setattr(total, name, getattr(total, name) + batch_stats[name])
        for pair_id, unsafe, safe, category, concept in json.loads(row["pairs"]):
            pairs.append(PromptPair(pair_id, unsafe, safe, (category,), concept=concept, source="llm"))
    pairs.sort(key=lambda p: p.pair_id)
    pairs, total.dropped_duplicate = dedup_by_unsafe_prompt(pairs)
    total.written = len(pairs)
    return pairs, total
