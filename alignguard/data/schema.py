"""Typed records for prompt pairs and prompt sets."""

from __future__ import annotations

from dataclasses import dataclass, field

from alignguard.data.taxonomy import Category


class DataFormatError(ValueError):
    """A malformed data file; the message names the file, the line and the problem."""

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class PromptPair:
    """An unsafe prompt and its minimally different safe twin.

    ``pair_id`` is stable across runs (derived from the source file's pair index or from the
    generator's seed and concept), so that shards, caches and splits can be keyed on it.
    """

    pair_id: str
    unsafe_prompt: str
    safe_prompt: str
    categories: tuple[Category, ...]
    concept: str | None = None
    source: str = "coprov2"

    @property
    def category(self) -> Category:
        """The primary (first listed) category."""
        return self.categories[0]


@dataclass(frozen=True)
class PromptRecord:
    """One prompt of an evaluation set (I2P, UD, COCO captions, CoProV2-test)."""

    prompt_id: str
    prompt: str
    seed: int | None = None
    guidance: float | None = None
    categories: tuple[Category, ...] = field(default_factory=tuple)
