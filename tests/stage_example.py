"""A minimal sharded stage: what adding a stage takes (this module, plus one registry line).

The run's categories, in shards of ``synthesis.batch_size``, are "rendered" into their name
lengths by a worker loaded once, stored one marker per shard, and sealed into ``lengths.json``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from alignguard.io import Manifest, RunDir, describe_outputs, write_manifest
from alignguard.stages import Pool, ShardedStage


@dataclass(frozen=True)
class Names:
    shard_id: int
    names: tuple[str, ...]

    @property
    def marker(self) -> str:
        return f"shards/{self.shard_id}.json"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Names:
        data = json.loads(text)
        return cls(data["shard_id"], tuple(data["names"]))


class Measure:
    def __init__(self, scale: int) -> None:
        self.scale = scale  # stands in for a model loaded once per worker

    def __call__(self, shard: Names) -> dict:
        return {"lengths": np.array([self.scale * len(n) for n in shard.names]), "names": list(shard.names)}


class Record:
    def __init__(self, stage_uri: str) -> None:
        self.stage = RunDir(stage_uri)

    def __call__(self, shard: Names, outputs: dict) -> dict:
        self.stage.write_json(
            shard.marker, {"names": outputs["names"], "lengths": outputs["lengths"].tolist()}
        )
        return {"shard_id": shard.shard_id, "names": len(shard.names)}


class LengthStage(ShardedStage[Names]):
    name = directory = "lengths"
    sections = ("data", "synthesis")
    shard_type = Names

    def plan(self) -> list[Names]:
        names, size = sorted(self.config.data.categories), self.config.synthesis.batch_size
        return [Names(i, tuple(names[s : s + size])) for i, s in enumerate(range(0, len(names), size))]

    def is_done(self, shard: Names) -> bool:
        marker = self.stage_dir.read_json(shard.marker) if self.stage_dir.exists(shard.marker) else {}
        return marker.get("names") == list(shard.names)

    def renderer(self) -> Pool:
        return Pool(Measure, {"scale": 2}, num_cpus=0.5)

    def store(self) -> Pool:
        return Pool(Record, {"stage_uri": self.stage_dir.url()}, num_cpus=0.5)

    def seal(self, shards, key, seconds, prepared=None) -> None:
        markers = [self.stage_dir.read_json(s.marker) for s in shards]
        lengths = {n: x for m in markers for n, x in zip(m["names"], m["lengths"], strict=True)}
        self.stage_dir.write_json("lengths.json", lengths)
        outputs = describe_outputs(self.stage_dir, ["lengths.json"])
        write_manifest(self.stage_dir, Manifest(self.name, self.identity(), key, outputs))
