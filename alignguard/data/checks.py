"""Dedup, deterministic splits and train/test leakage checks for prompt data."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from alignguard.data.schema import PromptPair

_NON_WORD = re.compile(r"[^\w]+")


def normalize_prompt(text: str) -> str:
    """A key under which near-identical prompts collide: NFKC, case-folded, punctuation and
    whitespace collapsed. ``"A  Red Cat!"`` and ``"a red cat"`` share a key."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_NON_WORD.sub(" ", folded).split())


@dataclass(frozen=True)
class DedupResult:
    kept: list[PromptPair]
    dropped: list[PromptPair]


def dedup_pairs(pairs: Iterable[PromptPair]) -> DedupResult:
    """Drop pairs whose (unsafe, safe) prompts repeat an earlier pair's, up to :func:`normalize_prompt`.

    The first occurrence is kept; its categories absorb nothing (labels are per pair)."""
    seen: set[tuple[str, str]] = set()
    kept: list[PromptPair] = []
    dropped: list[PromptPair] = []
    for pair in pairs:
        key = (normalize_prompt(pair.unsafe_prompt), normalize_prompt(pair.safe_prompt))
        (dropped if key in seen else kept).append(pair)
        seen.add(key)
    return DedupResult(kept=kept, dropped=dropped)


def leaked_prompts(train: Iterable[str], test: Iterable[str]) -> set[str]:
    """Normalised test prompts that also occur in training (e.g. 728 of CoProV2-test's 8,000)."""
    train_keys = {normalize_prompt(text) for text in train}
    return {key for key in map(normalize_prompt, test) if key in train_keys}


def split_pairs(
    pairs: Sequence[PromptPair], test_fraction: float, seed: int
) -> tuple[list[PromptPair], list[PromptPair]]:
    """Split pairs into (train, test) deterministically, by group.

    A pair's group is its concept when known, else its normalised unsafe prompt, so near-duplicate
    prompts of one concept never straddle the split. Membership depends only on the group and the
    seed (a hash), so adding pairs never moves existing ones across the split.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    train: list[PromptPair] = []
    test: list[PromptPair] = []
    for pair in pairs:
        group = pair.concept or normalize_prompt(pair.unsafe_prompt)
        (test if _unit_hash(f"{seed}:{group}") < test_fraction else train).append(pair)
    return train, test


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
