"""Readers for evaluation prompt sets: I2P, Unsafe Diffusion (UD), COCO-style captions.

All share one CSV shape: a prompt column plus optional seed, guidance, categories and id
columns, each accepted under the names the public files use:

=============  ==============================================
field          accepted column names
=============  ==============================================
prompt         ``prompt``, ``text``, ``caption``
seed           ``sd_seed``, ``evaluation_seed``, ``seed``
guidance       ``sd_guidance_scale``, ``evaluation_guidance``, ``guidance_scale``, ``guidance``
categories     ``categories``, ``category``, ``label`` (comma-separated)
id             ``prompt_id``, ``case_number``, ``id``, ``image_id``
=============  ==============================================
"""

from __future__ import annotations

import csv
from pathlib import Path

from alignguard.data.schema import DataFormatError, PromptRecord
from alignguard.data.taxonomy import Category, UnknownCategoryError, normalize_category

_ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt", "text", "caption"),
    "seed": ("sd_seed", "evaluation_seed", "seed"),
    "guidance": ("sd_guidance_scale", "evaluation_guidance", "guidance_scale", "guidance"),
    "categories": ("categories", "category", "label"),
    "id": ("prompt_id", "case_number", "id", "image_id"),
}
# Labels in public prompt sets that name no harm category (UD's "normal", COCO's none).
_BENIGN_LABELS = {"", "none", "normal", "benign", "safe"}


def read_prompt_set(path: str | Path, strict_categories: bool = True) -> list[PromptRecord]:
    """Read an I2P/UD/COCO-style CSV into prompt records.

    Args:
        path: the CSV file.
        strict_categories: raise on an unknown category label (otherwise it is dropped).

    Raises:
        DataFormatError: no prompt column, an unparsable seed or guidance, an unknown label.
    """
    path_str = str(path)
    try:
        handle = open(path_str, newline="", encoding="utf-8")  # noqa: SIM115 (closed by `with` below)
    except FileNotFoundError:
        raise DataFormatError(path_str, None, "file not found") from None
    records: list[PromptRecord] = []
    with handle:
        reader = csv.DictReader(handle)
        columns = _resolve_columns(path_str, reader.fieldnames or [])
        stem = Path(path_str).stem
        for row in reader:
            line = reader.line_num
            prompt = (row.get(columns["prompt"]) or "").strip()
            if not prompt:
                raise DataFormatError(path_str, line, "empty prompt")
            records.append(
                PromptRecord(
                    prompt_id=_cell(row, columns, "id") or f"{stem}-{len(records):06d}",
                    prompt=prompt,
                    seed=_parse_number(path_str, line, "seed", _cell(row, columns, "seed"), int),
                    guidance=_parse_number(
                        path_str, line, "guidance", _cell(row, columns, "guidance"), float
                    ),
                    categories=_parse_categories(
                        path_str, line, _cell(row, columns, "categories"), strict_categories
                    ),
                )
            )
    return records


def _resolve_columns(path: str, fieldnames: list[str]) -> dict[str, str]:
    by_lower = {name.strip().lower(): name for name in fieldnames}
    columns = {}
    for field, aliases in _ALIASES.items():
        found = next((by_lower[alias] for alias in aliases if alias in by_lower), None)
        if found is not None:
            columns[field] = found
    if "prompt" not in columns:
        raise DataFormatError(
            path, 1, f"no prompt column (one of {', '.join(_ALIASES['prompt'])}); header is {fieldnames}"
        )
    return columns


def _cell(row: dict[str, str], columns: dict[str, str], field: str) -> str | None:
    if field not in columns:
        return None
    value = (row.get(columns[field]) or "").strip()
    return value or None


def _parse_number(path: str, line: int, field: str, text: str | None, kind: type) -> int | float | None:
    if text is None:
        return None
    try:
        return kind(float(text)) if kind is int else kind(text)
    except ValueError:
        raise DataFormatError(path, line, f"{field} {text!r} is not a number") from None


def _parse_categories(path: str, line: int, text: str | None, strict: bool) -> tuple[Category, ...]:
    if text is None:
        return ()
    labels: list[Category] = []
    for label in text.split(","):
        if label.strip().lower() in _BENIGN_LABELS:
            continue
        try:
            category = normalize_category(label)
        except UnknownCategoryError as exc:
            if strict:
                raise DataFormatError(path, line, str(exc)) from None
            continue
        if category not in labels:
            labels.append(category)
    return tuple(labels)
