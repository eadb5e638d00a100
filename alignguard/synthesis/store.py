"""The synthesis stage on disk: images, the training cache, and per-shard markers.

Deliberately light (numpy, PIL, pyarrow, safetensors; no torch or diffusers): the writer
workers that import it start fast and stay off the renderer's critical path.

Layout under ``<run>/synthesis/``::

    images/<category>/<pair_id>-{unsafe,safe}.<png|jpg|webp>
    cache/shard-00012.safetensors      latents_*, text_*, (pooled_*, time_ids)  [B, ...]
    cache/empty_prompt.safetensors     text (and pooled): the caption-dropout conditioning
    shards/shard-00012.json            the shard's pairs and files: written LAST
    pairs.parquet                      every pair of the stage (written by the driver)
    manifest.json                      written last of all

A shard counts as done only when its marker exists, names the same plan fingerprint and every
file it lists exists with the recorded size. A crash at any point leaves at most a shard
without a marker, which the next run renders again (overwriting the same file names).
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy

from alignguard.io.manifest import sha256_bytes
from alignguard.io.storage import RunDir
from alignguard.synthesis.plan import Shard

IMAGE_EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
EMPTY_PROMPT_CACHE = "cache/empty_prompt.safetensors"
PAIRS_TABLE = "pairs.parquet"


class ShardValidationError(ValueError):
    """Rendered outputs that must not be written: wrong counts or shapes, non-finite values."""


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """PNG (lossless), JPEG or WebP (quality 95) bytes of a uint8 ``[H, W, 3]`` image."""
    buffer = io.BytesIO()
    options = {} if image_format == "png" else {"quality": 95}
    Image.fromarray(image).save(buffer, format=image_format.upper(), **options)
    return buffer.getvalue()


def image_path(category: str, pair_id: str, side: str, image_format: str) -> str:
    return f"images/{category}/{pair_id}-{side}.{IMAGE_EXTENSIONS[image_format]}"


def validate_rendered(shard: Shard, rendered: dict[str, np.ndarray]) -> None:
    """Counts, shapes and finite values of one rendered shard."""
    count = len(shard.pairs)
    for side in ("unsafe", "safe"):
        images = rendered[f"{side}_images"]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != count or images.shape[-1] != 3:
            raise ShardValidationError(
                f"{shard.name}: {side} images {images.dtype} {images.shape}, want uint8 [{count}, H, W, 3]"
            )
    for name, array in rendered.items():
        if name.endswith("_images"):
            continue
        expected = 1 if name.startswith("empty_") else count
        if array.shape[0] != expected:
            raise ShardValidationError(f"{shard.name}: {name} has {array.shape[0]} rows, want {expected}")
        if not np.isfinite(array).all():
            raise ShardValidationError(f"{shard.name}: {name} has non-finite values")


def write_shard(
    stage: RunDir,
    shard: Shard,
    rendered: dict[str, np.ndarray],
    image_format: str,
    cache_dtype: str,
    model_id: str,
) -> dict:
    """Validate and write one shard's images and cache, then its marker; returns a summary."""
    start = time.perf_counter()
    validate_rendered(shard, rendered)
    files: dict[str, int] = {}
    rows = []
    for index, pair in enumerate(shard.pairs):
        paths = {}
        for side in ("unsafe", "safe"):
            rel = image_path(pair.category, pair.pair_id, side, image_format)
            data = encode_image(rendered[f"{side}_images"][index], image_format)
            stage.write_bytes(rel, data)
            files[rel] = len(data)
            paths[side] = rel
        rows.append(_pair_row(pair, paths, shard.shard_id, model_id))
    cache = _write_cache(stage, shard, rendered, cache_dtype)
    if cache is not None:
        files[cache["path"]] = cache["bytes"]
    marker = {
        "shard_id": shard.shard_id,
        "fingerprint": shard.fingerprint(),
        "pairs": rows,
        "files": files,
        "cache": cache,
    }
    stage.write_json(f"shards/{shard.name}.json", marker)
    return {
        "shard_id": shard.shard_id,
        "pairs": len(shard.pairs),
        "bytes": sum(files.values()),
        "write_seconds": time.perf_counter() - start,
    }


def _pair_row(pair, paths: dict[str, str], shard_id: int, model_id: str) -> dict:
    return {
        "pair_id": pair.pair_id,
        "category": pair.category,
        "categories": list(pair.categories),
        "concept": pair.concept,
        "unsafe_prompt": pair.unsafe_prompt,
        "safe_prompt": pair.safe_prompt,
        "seed": pair.seed,
        "unsafe_image": paths["unsafe"],
        "safe_image": paths["safe"],
        "shard_id": shard_id,
        "model_id": model_id,
    }


def _write_cache(
    stage: RunDir, shard: Shard, rendered: dict[str, np.ndarray], cache_dtype: str
) -> dict | None:
    tensors = {
        name: np.ascontiguousarray(array, dtype=cache_dtype)
        for name, array in rendered.items()
        if not name.endswith("_images") and not name.startswith("empty_")
    }
    if not tensors:
        return None
    empty = {
        name.removeprefix("empty_"): np.ascontiguousarray(array, dtype=cache_dtype)
        for name, array in rendered.items()
        if name.startswith("empty_")
    }
    if empty and not stage.exists(EMPTY_PROMPT_CACHE):  # identical from every shard: first writer wins
        stage.write_bytes(EMPTY_PROMPT_CACHE, save_numpy(empty))
    rel = f"cache/{shard.name}.safetensors"
    data = save_numpy(tensors, metadata={"pair_ids": json.dumps([p.pair_id for p in shard.pairs])})
    stage.write_bytes(rel, data)
    return {"path": rel, "bytes": len(data), "sha256": sha256_bytes(data)}


def shard_is_complete(stage: RunDir, shard: Shard) -> bool:
    """The shard's marker exists for this exact plan and every file it lists is there, whole."""
    marker_rel = f"shards/{shard.name}.json"
    if not stage.exists(marker_rel):
        return False
    try:
        marker = stage.read_json(marker_rel)
    except ValueError:
        return False
    if marker.get("fingerprint") != shard.fingerprint():
        return False
    return all(stage.exists(rel) and stage.size(rel) == size for rel, size in marker["files"].items())


def read_markers(stage: RunDir) -> list[dict]:
    """Every shard marker, ordered by shard id."""
    names = [name for name in stage.listdir("shards") if name.endswith(".json")]
    return sorted((stage.read_json("shards", name) for name in names), key=lambda m: m["shard_id"])


def write_pairs_table(stage: RunDir, markers: list[dict]) -> int:
    """``pairs.parquet``: one row per pair, from the shard markers; returns the row count."""
    rows = [row for marker in markers for row in marker["pairs"]]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    stage.write_bytes(PAIRS_TABLE, buffer.getvalue())
    return len(rows)


def read_table(stage: RunDir, name: str) -> list[dict]:
    """Rows of a Parquet table in the stage directory."""
    return pq.read_table(io.BytesIO(stage.read_bytes(name))).to_pylist()


def read_pairs_table(stage: RunDir) -> list[dict]:
    return read_table(stage, PAIRS_TABLE)


@dataclass
class PairCache:
    """The training cache of a set of pairs, in memory: float32 arrays ``[N, ...]`` in pair order."""

    pair_ids: list[str]
    categories: list[list[str]]
    tensors: dict[str, np.ndarray]
    empty: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.pair_ids)

    def select(self, category: str | None) -> PairCache:
        """The pairs labelled ``category`` (a multi-label pair belongs to each of its labels)."""
        if category is None:
            return self
        keep = [i for i, labels in enumerate(self.categories) if category in labels]
        index = np.asarray(keep, dtype=np.int64)
        return PairCache(
            pair_ids=[self.pair_ids[i] for i in keep],
            categories=[self.categories[i] for i in keep],
            tensors={name: tensor[index] for name, tensor in self.tensors.items()},
            empty=self.empty,
        )


def has_pair_cache(stage: RunDir) -> bool:
    """Whether the synthesis stage wrote a training cache (``synthesis.cache_latents``)."""
    markers = read_markers(stage)
    return bool(markers) and markers[0].get("cache") is not None


def load_pair_cache(stage: RunDir) -> PairCache:
    """Read every cache shard of a complete synthesis stage into memory (float32)."""
    if not has_pair_cache(stage):
        raise FileNotFoundError(
            f"no training cache in {stage.uri}; run synthesis with synthesis.cache_latents=true"
        )
    pair_ids, categories, parts = [], [], []
    for marker in read_markers(stage):
        pair_ids += [row["pair_id"] for row in marker["pairs"]]
        categories += [list(row["categories"]) for row in marker["pairs"]]
        parts.append(load_numpy(stage.read_bytes(marker["cache"]["path"])))
    tensors = {name: np.concatenate([part[name] for part in parts]).astype(np.float32) for name in parts[0]}
    empty = {
        name: array.astype(np.float32)
        for name, array in load_numpy(stage.read_bytes(EMPTY_PROMPT_CACHE)).items()
    }
    return PairCache(pair_ids=pair_ids, categories=categories, tensors=tensors, empty=empty)
