"""Reader and writer for the CoProV2 pair format.

Format (as released with the paper): a CSV with columns ``prompt,image,category``. ``image``
names the pair and the side: ``u_idx_<N>_<k>.jpg`` is the unsafe prompt of pair N,
``s_idx_<N>_<k>.jpg`` its safe twin. A pair with several labels is listed once per label
(both sides each time). The reader groups rows into one :class:`PromptPair` per N and checks
that every pair has both sides, consistent texts and identical label sets on both sides.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from alignguard.data.checks import dedup_pairs
from alignguard.data.schema import DataFormatError, PromptPair
from alignguard.data.taxonomy import CATEGORIES, Category, UnknownCategoryError, normalize_category

REQUIRED_COLUMNS = ("prompt", "image", "category")
_IMAGE_NAME = re.compile(r"^(?P<side>[us])_idx_(?P<index>\d+)_(?P<k>\d+)\.[A-Za-z0-9]+$")


def coprov2_pair_id(index: int) -> str:
    """The stable id of CoProV2 pair ``index``."""
    return f"coprov2-{index:07d}"


@dataclass
class _PartialPair:
    first_line: int
    prompts: dict[str, str] = field(default_factory=dict)  # side -> prompt
    labels: dict[str, list[Category]] = field(default_factory=dict)  # side -> labels in file order


def read_coprov2(path: str | Path) -> list[PromptPair]:
    """Read a CoProV2-format CSV into prompt pairs, ordered by pair index.

    Raises:
        DataFormatError: missing column, malformed image name, unknown label, a side without
            its twin, or a side whose prompt differs between its label rows.
    """
    path_str = str(path)
    partial: dict[int, _PartialPair] = {}
    for line, row in _read_rows(path_str):
        side, index = _parse_image_name(path_str, line, row["image"])
        label = _parse_label(path_str, line, row["category"])
        prompt = row["prompt"].strip()
        if not prompt:
            raise DataFormatError(path_str, line, f"empty prompt for {row['image']}")
        entry = partial.setdefault(index, _PartialPair(first_line=line))
        previous = entry.prompts.setdefault(side, prompt)
        if previous != prompt:
            raise DataFormatError(
                path_str, line, f"{row['image']} has two different prompts: {previous!r} and {prompt!r}"
            )
        labels = entry.labels.setdefault(side, [])
        if label not in labels:
            labels.append(label)
    return [_finish_pair(path_str, index, partial[index]) for index in sorted(partial)]


def write_coprov2(pairs: Iterable[PromptPair], path: str | Path) -> None:
    """Write pairs in the CoProV2 format (one row per side and label), readable by :func:`read_coprov2`."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(REQUIRED_COLUMNS)
        for number, pair in enumerate(pairs):
            for category in pair.categories:
                writer.writerow([pair.unsafe_prompt, f"u_idx_{number:07d}_0.jpg", category])
                writer.writerow([pair.safe_prompt, f"s_idx_{number:07d}_0.jpg", category])


def category_counts(pairs: Iterable[PromptPair]) -> dict[str, int]:
    """Pairs per category (a multi-label pair counts once under each of its labels)."""
    counts = Counter(category for pair in pairs for category in pair.categories)
    return {category: counts.get(category, 0) for category in CATEGORIES}


def _read_rows(path: str) -> Iterator[tuple[int, dict[str, str]]]:
    try:
        handle = open(path, newline="", encoding="utf-8")  # noqa: SIM115 (closed by `with` below)
    except FileNotFoundError:
        raise DataFormatError(path, None, "file not found") from None
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise DataFormatError(path, 1, "empty file (expected a header prompt,image,category)")
        columns = [name.strip().lower() for name in header]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        if missing:
            raise DataFormatError(path, 1, f"missing column(s) {', '.join(missing)}; header is {header}")
        positions = {name: columns.index(name) for name in REQUIRED_COLUMNS}
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < len(columns):
                raise DataFormatError(
                    path, reader.line_num, f"expected {len(columns)} fields, got {len(row)}"
                )
            yield reader.line_num, {name: row[pos] for name, pos in positions.items()}


def _parse_image_name(path: str, line: int, image: str) -> tuple[str, int]:
    match = _IMAGE_NAME.match(image.strip())
    if not match:
        raise DataFormatError(
            path, line, f"image name {image!r} is not u_idx_<N>_<k>.<ext> or s_idx_<N>_<k>.<ext>"
        )
    return match["side"], int(match["index"])


def _parse_label(path: str, line: int, label: str) -> Category:
    try:
        return normalize_category(label)
    except UnknownCategoryError as exc:
        raise DataFormatError(path, line, str(exc)) from None


def _finish_pair(path: str, index: int, entry: _PartialPair) -> PromptPair:
    for side, twin in (("u", "s"), ("s", "u")):
        if side in entry.prompts and twin not in entry.prompts:
            raise DataFormatError(
                path, entry.first_line, f"pair {index} has no {'safe' if twin == 's' else 'unsafe'} twin"
            )
    if set(entry.labels["u"]) != set(entry.labels["s"]):
        raise DataFormatError(
            path,
            entry.first_line,
            f"pair {index}: unsafe side labelled {entry.labels['u']}, safe side {entry.labels['s']}",
        )
    return PromptPair(
        pair_id=coprov2_pair_id(index),
        unsafe_prompt=entry.prompts["u"],
        safe_prompt=entry.prompts["s"],
        categories=tuple(entry.labels["u"]),
        source="coprov2",
    )


def coprov2_stats(pairs: list[PromptPair]) -> dict:
    """Counts a person wants to see before training on a pair file."""
    labels_per_pair = Counter(len(pair.categories) for pair in pairs)
    return {
        "pairs": len(pairs),
        "prompts": 2 * len(pairs),
        "unique_unsafe_prompts": len({pair.unsafe_prompt for pair in pairs}),
        "unique_safe_prompts": len({pair.safe_prompt for pair in pairs}),
        "duplicate_pairs": len(dedup_pairs(pairs).dropped),
        "labels_per_pair": {str(k): labels_per_pair[k] for k in sorted(labels_per_pair)},
        "categories": category_counts(pairs),
    }
