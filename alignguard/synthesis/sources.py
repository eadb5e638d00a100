"""Where a run's prompt pairs come from: the toy world's writer, a CoProV2 CSV, or the LLM stage."""

from __future__ import annotations

import io
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from alignguard.config.schema import ExperimentConfig
from alignguard.data.checks import dedup_pairs, split_pairs
from alignguard.data.coprov2 import read_coprov2
from alignguard.data.schema import PromptPair
from alignguard.io.storage import RunDir
from alignguard.toyworld.prompts import write_pairs

LLM_PAIRS = "prompts/pairs.parquet"  # written by the prompt stage (alignguard/stages/prompts.py)


def load_pairs(config: ExperimentConfig, run_dir: RunDir) -> list[PromptPair]:
    """Every pair of the configured source and categories, deduplicated and capped per category."""
    data = config.data
    if data.source == "toyworld":
        pairs = write_pairs(config.synthesis.pairs_per_concept, config.run.seed, data.categories)
    elif data.source == "csv":
        pairs = read_coprov2(data.path)  # type: ignore[arg-type]  # validated non-empty for csv
    else:
        if not run_dir.exists(LLM_PAIRS):
            raise FileNotFoundError(f"{run_dir.url(LLM_PAIRS)} is missing: run the prompt stage first")
        pairs = read_pair_table(run_dir.read_bytes(LLM_PAIRS))
    wanted = set(data.categories)
    pairs = [p for p in pairs if wanted & set(p.categories)]
    if data.dedup:
        pairs = dedup_pairs(pairs).kept
    return _cap_per_category(pairs, data.max_pairs_per_category)


def train_test_pairs(config: ExperimentConfig, run_dir: RunDir) -> tuple[list[PromptPair], list[PromptPair]]:
    """The deterministic split of :func:`load_pairs` (by concept, else by normalised prompt)."""
    return split_pairs(load_pairs(config, run_dir), config.data.test_fraction, config.run.seed)


def _cap_per_category(pairs: list[PromptPair], cap: int | None) -> list[PromptPair]:
    """At most ``cap`` pairs per primary category, keeping the lowest pair ids (deterministic)."""
    if cap is None:
        return pairs
    by_category: dict[str, list[PromptPair]] = defaultdict(list)
    for pair in sorted(pairs, key=lambda p: p.pair_id):
        by_category[pair.category].append(pair)
    return sorted((p for group in by_category.values() for p in group[:cap]), key=lambda p: p.pair_id)


def pair_table_bytes(pairs: list[PromptPair]) -> bytes:
    rows = [
        {
            "pair_id": p.pair_id,
            "unsafe_prompt": p.unsafe_prompt,
            "safe_prompt": p.safe_prompt,
            "categories": list(p.categories),
            "concept": p.concept,
            "source": p.source,
        }
        for p in pairs
    ]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def read_pair_table(data: bytes) -> list[PromptPair]:
    table = pq.read_table(io.BytesIO(data)).to_pylist()
    return [
        PromptPair(
            pair_id=row["pair_id"],
            unsafe_prompt=row["unsafe_prompt"],
            safe_prompt=row["safe_prompt"],
            categories=tuple(row["categories"]),
            concept=row["concept"],
            source=row["source"],
        )
        for row in table
    ]
