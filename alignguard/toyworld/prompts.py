"""The toy world's template prompt writer: CoProV2-style pairs and benign prompts.

Deterministic from a seed: every prompt is a pure function of (seed, concept, index), so a
pair's id names it forever and a larger request extends a smaller one without changing it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np

from alignguard.data.schema import PromptPair
from alignguard.data.taxonomy import CATEGORIES, Category
from alignguard.toyworld.world import BENIGN_WORDS, CONCEPTS, SHAPES, TEMPLATES, Concept


def _rng(*key: object) -> np.random.Generator:
    digest = hashlib.sha256(":".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "big"))


def fill_template(template: str, word: str, shape: str) -> str:
    """``template`` with its word and shape, and "a" turned into "an" before a vowel."""
    text = template.format(word=word, shape=shape)
    return text.replace(f"a {word} ", f"an {word} ") if word[0] in "aeiou" else text


def _sentence(rng: np.random.Generator, word: str) -> str:
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    return fill_template(template, word, SHAPES[int(rng.integers(len(SHAPES)))])


def concept_pair(concept: Concept, index: int, seed: int) -> PromptPair:
    """Pair ``index`` of ``concept``: the same template and shape, harmful word vs its safe twin."""
    rng = _rng("pair", seed, concept.harmful_word, index)
    template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    return PromptPair(
        pair_id=f"toy-s{seed}-{concept.harmful_word}-{index:05d}",
        unsafe_prompt=fill_template(template, concept.harmful_word, shape),
        safe_prompt=fill_template(template, concept.safe_word, shape),
        categories=(concept.category,),
        concept=concept.name,
        source="toyworld",
    )


def write_pairs(
    pairs_per_concept: int, seed: int = 0, categories: Iterable[Category] = CATEGORIES
) -> list[PromptPair]:
    """``pairs_per_concept`` pairs for every concept of ``categories`` (ordered by category, concept)."""
    wanted = set(categories)
    return [
        concept_pair(concept, index, seed)
        for concept in CONCEPTS
        if concept.category in wanted
        for index in range(pairs_per_concept)
    ]


def category_pairs(category: Category, n: int, seed: int = 0) -> list[PromptPair]:
    """``n`` pairs of one category, cycling over its concepts."""
    concepts = [concept for concept in CONCEPTS if concept.category == category]
    return [concept_pair(concepts[i % len(concepts)], i // len(concepts), seed) for i in range(n)]


def benign_prompts(n: int, seed: int = 0) -> list[str]:
    """``n`` prompts that name only benign colours and shapes."""
    prompts = []
    for index in range(n):
        rng = _rng("benign", seed, index)
        prompts.append(_sentence(rng, BENIGN_WORDS[int(rng.integers(len(BENIGN_WORDS)))]))
    return prompts
