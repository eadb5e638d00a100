"""Leak-resistant splits of CoProV2 pairs for the prompt guard.

CoProV2 has no concept column, but its LLM wrote pairs concept by concept, in file order ("porch
monkey" pairs 0-11, then "coon", ...). Consecutive pair indices therefore share concept words and
phrasing; a random pair-level split puts siblings on both sides and flatters the held-out score.
We split by **groups**, each going wholly to train, calibration or test by a seeded hash. A group
joins (union-find) a **contiguous block of pair indices** (``index // block_size``) with every
other block holding the same prompt up to :func:`normalize_prompt` (535 unsafe prompts repeat at
distant indices). :func:`leakage` measures what is left; the training report records it next to a
naive pair-level split's. (Also joining embedding near-duplicates, cosine >= 0.9, chained 72% of
the file into one group: not usable.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignguard.data.checks import leaked_prompts, normalize_prompt
from alignguard.data.schema import PromptPair

SPLITS = ("train", "calibration", "test")
_TRAILING_INDEX = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class GuardSplit:
    train: list[PromptPair]
    calibration: list[PromptPair]
    test: list[PromptPair]

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}


def pair_index(pair: PromptPair, position: int) -> int:
    """The pair's index in its source file (from ``coprov2-0000123``), else its position."""
    match = _TRAILING_INDEX.search(pair.pair_id)
    return int(match.group(1)) if match else position


def block_split(
    pairs: Sequence[PromptPair],
    block_size: int = 25,
    calibration_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> GuardSplit:
    """Split pairs by groups (see the module doc) into train / calibration / test, deterministically.

    A pair with a concept (generated data) is grouped by its concept instead of its block.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if calibration_fraction < 0 or test_fraction < 0 or calibration_fraction + test_fraction >= 1:
        raise ValueError("calibration_fraction and test_fraction must be >= 0 and sum to less than 1")
    groups = pair_groups(pairs, block_size)
    parts: dict[str, list[PromptPair]] = {name: [] for name in SPLITS}
    for pair, group in zip(pairs, groups, strict=True):
        u = _unit_hash(f"{seed}:{group}")
        name = (
            "test"
            if u < test_fraction
            else "calibration"
            if u < test_fraction + calibration_fraction
            else "train"
        )
        parts[name].append(pair)
    return GuardSplit(**parts)


def pair_groups(pairs: Sequence[PromptPair], block_size: int) -> list[str]:
    """The group name of every pair: its block, joined with every block sharing a prompt."""
    keys = [pair.concept or f"block-{pair_index(pair, i) // block_size}" for i, pair in enumerate(pairs)]
    parent = {key: key for key in keys}

    def find(key: str) -> str:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    first_seen: dict[str, str] = {}
    for key, pair in zip(keys, pairs, strict=True):
        for text in (pair.unsafe_prompt, pair.safe_prompt):
            union(key, first_seen.setdefault(normalize_prompt(text), key))
    return [find(key) for key in keys]


def random_pair_split(pairs: Sequence[PromptPair], seed: int = 0) -> GuardSplit:
    """The naive baseline: each pair on its own, to compare leakage against."""
    parts: dict[str, list[PromptPair]] = {name: [] for name in SPLITS}
    for pair in pairs:
        u = _unit_hash(f"{seed}:{pair.pair_id}")
        parts["test" if u < 0.1 else "calibration" if u < 0.2 else "train"].append(pair)
    return GuardSplit(**parts)


def leakage(
    train_texts: Sequence[str],
    test_texts: Sequence[str],
    train_embeddings: torch.Tensor | None = None,
    test_embeddings: torch.Tensor | None = None,
    near_cosine: float = 0.9,
) -> dict[str, float]:
    """How much of ``test`` is already in ``train``.

    ``exact``: share of test prompts equal to a train prompt up to normalisation. ``near`` (when
    unit-norm embeddings ``[N, D]`` are given): share whose nearest train prompt has cosine
    similarity >= ``near_cosine`` (paraphrases of one concept sentence land at 0.9 and above).
    """
    exact = len(leaked_prompts(train_texts, test_texts))
    report = {"exact": exact / max(1, len(test_texts))}
    if train_embeddings is not None and test_embeddings is not None:
        best = torch.full((len(test_embeddings),), -1.0)
        for start in range(0, len(train_embeddings), 4096):
            sims = test_embeddings @ train_embeddings[start : start + 4096].T  # [N_test, chunk]
            best = torch.maximum(best, sims.max(dim=1).values)
        report["near"] = float((best >= near_cosine).float().mean())
        report["median_nearest_cosine"] = float(best.median())
    return report


def _unit_hash(text: str) -> float:
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64
