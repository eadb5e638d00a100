"""The synthesis plan: which pairs are rendered, with which seeds, in which shards.

Everything is a pure function of the pair list and the run seed, so a rerun computes the same
plan, finds which shards are already complete and renders only the rest. A shard is the unit
of work and of atomic output: one Ray Data batch, one cache file, one marker written last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from alignguard.data.schema import PromptPair


def pair_seed(run_seed: int, pair_id: str) -> int:
    """The seed both images of a pair are rendered with: stable, independent of the pair's position."""
    digest = hashlib.sha256(f"{run_seed}:{pair_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFF_FFFF


@dataclass(frozen=True)
class PlannedPair:
    pair_id: str
    unsafe_prompt: str
    safe_prompt: str
    categories: tuple[str, ...]
    concept: str | None
    seed: int

    @property
    def category(self) -> str:
        return self.categories[0]


@dataclass(frozen=True)
class Shard:
    shard_id: int
    pairs: tuple[PlannedPair, ...]

    @property
    def name(self) -> str:
        return f"shard-{self.shard_id:05d}"

    def fingerprint(self) -> str:
        """A hash of everything that decides the shard's outputs (ids, prompts, seeds)."""
        payload = json.dumps([asdict(pair) for pair in self.pairs], sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps({"shard_id": self.shard_id, "pairs": [asdict(pair) for pair in self.pairs]})

    @classmethod
    def from_json(cls, text: str) -> Shard:
        data = json.loads(text)
        pairs = tuple(
            PlannedPair(**{**pair, "categories": tuple(pair["categories"])}) for pair in data["pairs"]
        )
        return cls(shard_id=int(data["shard_id"]), pairs=pairs)


def plan_shards(pairs: Sequence[PromptPair], run_seed: int, shard_size: int) -> list[Shard]:
    """Sort pairs by id, give each its seed, and cut them into shards of ``shard_size`` pairs."""
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}")
    ids = [pair.pair_id for pair in pairs]
    if len(ids) != len(set(ids)):
        duplicates = sorted({pair_id for pair_id in ids if ids.count(pair_id) > 1})[:5]
        raise ValueError(f"duplicate pair ids in the plan: {duplicates}")
    planned = [
        PlannedPair(
            pair_id=pair.pair_id,
            unsafe_prompt=pair.unsafe_prompt,
            safe_prompt=pair.safe_prompt,
            categories=tuple(pair.categories),
            concept=pair.concept,
            seed=pair_seed(run_seed, pair.pair_id),
        )
        for pair in sorted(pairs, key=lambda p: p.pair_id)
    ]
    return [
        Shard(shard_id=index, pairs=tuple(planned[start : start + shard_size]))
        for index, start in enumerate(range(0, len(planned), shard_size))
    ]
