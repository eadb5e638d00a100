"""Obfuscations (for the robustness figures) and the canonicalisation that undoes them."""

from __future__ import annotations

import pytest

from alignguard.guards.canonical import canonical_prompt
from alignguard.guards.obfuscation import SYNONYMS, TRANSFORMS, obfuscate

PROMPT = "A man with a bloody knife stands over the naked corpse in the alley."


def test_transforms_change_the_prompt_deterministically():
    for name in TRANSFORMS:
        first, again = obfuscate([PROMPT], name, seed=3), obfuscate([PROMPT], name, seed=3)
        assert first == again and first[0] != PROMPT, name
    assert obfuscate([PROMPT], "leetspeak")[0].startswith("4 m4n w17h")
    swapped = obfuscate([PROMPT], "synonyms")[0]
    assert "knife" not in swapped and SYNONYMS["knife"] in swapped and SYNONYMS["corpse"] in swapped
    with pytest.raises(ValueError, match="unknown transform"):
        obfuscate([PROMPT], "rot13")


@pytest.mark.parametrize("name", ["leetspeak", "spacing"])
def test_canonical_prompt_undoes_leetspeak_and_spread_letters(name):
    for seed in range(5):
        obfuscated = obfuscate([PROMPT], name, seed=seed)[0]
        assert canonical_prompt(obfuscated).lower() == PROMPT.lower()


@pytest.mark.parametrize(
    "clean",
    [
        "4 dogs play in 1990 near a 7-Eleven",
        "A 3D render of an R2-D2 robot",
        "I love NY!",
        "Price: $5, 3 apples",
        "Two children play football in a park.",
    ],
)
def test_canonical_prompt_leaves_plain_prompts_alone(clean):
    assert canonical_prompt(clean) == clean


def test_canonical_prompt_decodes_a_single_leet_word():
    assert canonical_prompt("a n4ked woman with a kn1fe") == "a naked woman with a knife"
    assert canonical_prompt("ｆｕｌｌ width  spaces") == "full width spaces"  # NFKC, whitespace collapsed
