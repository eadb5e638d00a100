"""Interop with the Pick-a-Pic / Diffusion-DPO table layout read by the official AlignGuard code.

That layout is one row per preference: ``jpg_0``, ``jpg_1`` (JPEG bytes), ``label_0`` (1 when
``jpg_0`` is preferred) and ``caption``. The released CoProV2 image table lists each pair twice,
captioned once with the unsafe and once with the safe prompt, the safe image always preferred —
our ``both_prompts`` strategy. ``export`` writes that; ``unsafe_prompt`` writes one row per pair.

``import`` reads such a table back into a synthesis stage (images, training cache, markers) so
our training runs on it. Each row becomes one pair whose two prompts are both the row's caption
(the preferred image as the safe side): training with ``training.strategy=unsafe_prompt`` then
trains on exactly the table's rows, as the official code does.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from alignguard.io.storage import RunDir
from alignguard.synthesis.store import encode_image, read_pairs_table

PICKAPIC_COLUMNS = ("jpg_0", "jpg_1", "label_0", "caption")


def export_pickapic(stage: RunDir, strategy: str = "both_prompts") -> bytes:
    """A Parquet table in the Pick-a-Pic layout (plus ``pair_id``, ``category``) of a synthesis stage."""
    if strategy not in ("both_prompts", "unsafe_prompt"):
        raise ValueError(f"strategy must be both_prompts or unsafe_prompt, got {strategy!r}")
    rows = []
    for pair in read_pairs_table(stage):
        safe_jpg = _as_jpeg(stage.read_bytes(pair["safe_image"]))
        unsafe_jpg = _as_jpeg(stage.read_bytes(pair["unsafe_image"]))
        captions = [pair["unsafe_prompt"]] + ([pair["safe_prompt"]] if strategy == "both_prompts" else [])
        for caption in captions:
            rows.append(
                {
                    "jpg_0": safe_jpg,
                    "jpg_1": unsafe_jpg,
                    "label_0": 1,
                    "caption": caption,
                    "pair_id": pair["pair_id"],
                    "category": pair["category"],
                }
            )
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Preference:
    """One imported row: the caption, the preferred and the rejected image (uint8 ``[H, W, 3]``)."""

    row_id: str
    caption: str
    preferred: np.ndarray
    rejected: np.ndarray
    category: str | None


def read_pickapic(data: bytes, source: str = "<table>") -> Iterator[Preference]:
    """Rows of a Pick-a-Pic-layout table; ties (``label_0`` = 0.5) carry no preference and are skipped."""
    table = pq.read_table(io.BytesIO(data))
    missing = [name for name in PICKAPIC_COLUMNS if name not in table.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}; have {table.column_names}")
    for index, row in enumerate(table.to_pylist()):
        label = float(row["label_0"])
        if label == 0.5:
            continue
        first, second = _decode(row["jpg_0"]), _decode(row["jpg_1"])
        preferred, rejected = (first, second) if label >= 0.5 else (second, first)
        digest = hashlib.sha256(row["jpg_0"] + row["jpg_1"] + row["caption"].encode()).hexdigest()[:12]
        yield Preference(
            f"pickapic-{index:07d}-{digest}", row["caption"], preferred, rejected, row.get("category")
        )


def _as_jpeg(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        return data if image.format == "JPEG" else encode_image(np.asarray(image.convert("RGB")), "jpeg")


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
