"""The toy world's definition, prompt writer and judge (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest

from alignguard.data.taxonomy import CATEGORIES
from alignguard.models.tokenizer import words_split, write_word_tokenizer
from alignguard.toyworld.judge import judge, preserved
from alignguard.toyworld.prompts import benign_prompts, category_pairs, concept_pair, write_pairs
from alignguard.toyworld.world import (
    BACKGROUND_RGB,
    BENIGN_COLOURS,
    BENIGN_WORDS,
    CONCEPTS,
    HARM_COLOURS,
    OBJECT_COLOURS,
    SHAPES,
    WORD_COLOURS,
    Layout,
    expected_content,
    render,
    sample_layout,
    vocabulary,
)


def test_every_category_has_harmful_concepts_with_benign_twins():
    for category in CATEGORIES:
        concepts = [c for c in CONCEPTS if c.category == category]
        assert len(concepts) >= 3
        for concept in concepts:
            assert WORD_COLOURS[concept.harmful_word] == HARM_COLOURS[category]
            assert WORD_COLOURS[concept.safe_word].category is None  # the twin's trait is benign
    words = [c.harmful_word for c in CONCEPTS] + [c.safe_word for c in CONCEPTS] + list(BENIGN_WORDS)
    assert len(words) == len(set(words))


def test_palette_is_well_separated():
    palette = np.array([c.rgb for c in OBJECT_COLOURS])
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= 0.5
    assert np.linalg.norm(palette - np.array(BACKGROUND_RGB), axis=-1).min() >= 0.7
    assert len({c.name for c in OBJECT_COLOURS}) == len(OBJECT_COLOURS) == 13
    harm = np.array([c.rgb for c in HARM_COLOURS.values()])
    harm_distances = np.linalg.norm(harm[:, None] - harm[None], axis=-1)
    np.fill_diagonal(harm_distances, np.inf)
    assert harm_distances.min() >= 1.0  # no category can be mistaken for another


def test_the_judge_reads_every_ground_truth_scene_exactly():
    rng = np.random.default_rng(0)
    for index in range(600):
        shape, colour = SHAPES[index % 3], OBJECT_COLOURS[index % len(OBJECT_COLOURS)]
        layout = sample_layout(rng)
        verdict = judge(render(shape, colour, layout))
        assert (verdict.shape, verdict.colour) == (shape, colour.name)
        assert verdict.harmful == (colour.category is not None)
        assert verdict.category == colour.category
        if colour.category:
            assert verdict.harm_scores[colour.category] == 1.0
        assert sum(verdict.harm_scores.values()) <= 1.0


def test_the_judge_tolerates_noise_uint8_and_speckles():
    layout = Layout(cx=16, cy=16, size=12)
    image = render("triangle", HARM_COLOURS["violence"], layout)
    noisy = np.clip(image + np.random.default_rng(1).normal(0, 0.05, image.shape), 0, 1)
    noisy[1, 1] = (0.0, 0.0, 1.0)  # a stray pixel far from the object
    as_uint8 = (noisy * 255).round().astype(np.uint8)
    verdict = judge(as_uint8)
    assert (verdict.shape, verdict.colour, verdict.category) == ("triangle", "red", "violence")


def test_an_empty_image_is_benign_and_has_no_content():
    verdict = judge(np.full((32, 32, 3), 0.5, dtype=np.float32))
    assert not verdict.harmful and verdict.shape is None and verdict.colour is None
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        judge(np.zeros((32, 32)))


def test_preserved_compares_content_and_layout():
    base = judge(render("square", BENIGN_COLOURS["azure"], Layout(16, 16, 12)))
    assert preserved(judge(render("square", BENIGN_COLOURS["azure"], Layout(17, 16, 12))), base)
    assert not preserved(judge(render("square", BENIGN_COLOURS["azure"], Layout(22, 16, 12))), base)
    assert not preserved(judge(render("bar", BENIGN_COLOURS["azure"], Layout(16, 16, 12))), base)
    assert not preserved(judge(render("square", BENIGN_COLOURS["mint"], Layout(16, 16, 12))), base)


def test_pairs_are_deterministic_minimal_twins():
    pairs = write_pairs(pairs_per_concept=5, seed=3)
    assert len(pairs) == 5 * len(CONCEPTS)
    assert pairs == write_pairs(pairs_per_concept=5, seed=3)
    assert write_pairs(pairs_per_concept=2, seed=3)[:2] == pairs[:2]  # larger requests extend smaller ones
    assert pairs != write_pairs(pairs_per_concept=5, seed=4)
    assert len({p.pair_id for p in pairs}) == len(pairs)
    for pair in pairs:
        unsafe, safe = pair.unsafe_prompt.split(), pair.safe_prompt.split()
        differing = [(u, s) for u, s in zip(unsafe, safe, strict=True) if u != s]
        assert len(differing) in (1, 2)  # the concept word (and its article, "a" vs "an")
        concept = next(c for c in CONCEPTS if c.name == pair.concept)
        assert expected_content(pair.unsafe_prompt) == (
            expected_content(pair.safe_prompt)[0],
            HARM_COLOURS[concept.category].name,
        )
        assert pair.categories == (concept.category,)


def test_category_pairs_cycle_over_concepts_and_benign_prompts_are_benign():
    pairs = category_pairs("sexual", 9, seed=0)
    assert {p.concept for p in pairs} == {c.name for c in CONCEPTS if c.category == "sexual"}
    assert pairs[0] == concept_pair(next(c for c in CONCEPTS if c.category == "sexual"), 0, 0)
    prompts = benign_prompts(50, seed=0)
    assert prompts == benign_prompts(50, seed=0) and len(set(prompts)) > 10
    for prompt in prompts:
        shape, colour = expected_content(prompt)
        assert shape in SHAPES and colour in BENIGN_COLOURS


def test_every_vocabulary_word_is_one_token(tmp_path):
    tokenizer = write_word_tokenizer(vocabulary(), tmp_path, max_length=16)
    assert words_split(tokenizer, vocabulary()) == []
    longest = max((p.unsafe_prompt for p in write_pairs(3)), key=lambda p: len(p.split()))
    assert len(tokenizer(longest).input_ids) <= 16
