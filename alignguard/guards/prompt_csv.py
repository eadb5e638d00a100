"""Reading a CSV of prompts to score (``alignguard guard prompts FILE.csv``)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from alignguard.data.schema import DataFormatError


@dataclass(frozen=True)
class PromptRow:
    row: int  # 1-based data row (the header is row 0)
    prompt: str
    id: str | None = None


def read_prompt_csv(path: str | Path) -> list[PromptRow]:
    """Rows of a CSV with a ``prompt`` column (and optionally ``id``); empty prompts are errors."""
    path_str = str(path)
    try:
        handle = open(path_str, newline="", encoding="utf-8-sig")  # a BOM is not part of the header  # noqa: SIM115 (closed by `with`)
    except FileNotFoundError:
        raise DataFormatError(path_str, None, "file not found") from None
    with handle:
        reader = csv.DictReader(handle)
        columns = [name.strip().lower() for name in reader.fieldnames or []]
        if "prompt" not in columns:
            raise DataFormatError(path_str, 1, f"no 'prompt' column; header is {reader.fieldnames}")
        reader.fieldnames = columns
        rows = []
        for number, record in enumerate(reader, start=1):
            prompt = (record.get("prompt") or "").strip()
            if not prompt:
                raise DataFormatError(path_str, reader.line_num, f"row {number} has an empty prompt")
            ident = (record.get("id") or "").strip() or None
            rows.append(PromptRow(number, prompt, ident))
    return rows
