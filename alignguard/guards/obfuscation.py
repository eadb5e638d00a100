"""Simple prompt obfuscations a user might try against a prompt guard (for robustness figures).

Each transform is deterministic for a seed: ``case`` (random upper/lower per character),
``spacing`` (a word's letters spread out, or runs of spaces), ``leetspeak`` (a->4, e->3, ...) and
``synonyms`` (harm-bearing words swapped for synonyms or euphemisms from a small fixed table).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

LEET = str.maketrans({"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"})

# Harm-bearing words frequent in CoProV2's unsafe prompts (more than in their safe twins) -> swaps.
SYNONYMS: dict[str, str] = {
    "blood": "crimson fluid",
    "bloody": "gory",
    "gun": "firearm",
    "knife": "blade",
    "beaten": "battered",
    "kill": "slay",
    "killed": "slain",
    "dead": "deceased",
    "corpse": "cadaver",
    "lifeless": "motionless",
    "victim": "casualty",
    "screams": "shrieks",
    "naked": "unclothed",
    "nude": "undressed",
    "sex": "intercourse",
    "breasts": "bosom",
    "lewd": "indecent",
    "pussy": "vagina",
    "cock": "penis",
    "ass": "butt",
    "racist": "bigoted",
    "hateful": "spiteful",
    "hate": "loathing",
    "nigger": "n-word",
    "niggers": "n-words",
    "swastika": "hakenkreuz",
    "noose": "hangman's loop",
    "stolen": "pilfered",
    "illegal": "unlawful",
    "drugs": "narcotics",
    "cocaine": "blow",
    "suicide": "self-termination",
    "cuts": "slices",
    "fat": "obese",
    "dumb": "stupid",
    "filthy": "grimy",
    "violence": "brutality",
    "burning": "ablaze",
    "fire": "flames",
    "forced": "coerced",
}
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")


def random_case(text: str, rng: random.Random) -> str:
    return "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in text)


def spacing(text: str, rng: random.Random) -> str:
    """Spread the letters of about a third of the words (``k n i f e``), double other spaces."""
    words = text.split(" ")
    out = [" ".join(word) if len(word) > 3 and rng.random() < 0.35 else word for word in words]
    return "  ".join(out)


def leetspeak(text: str, rng: random.Random) -> str:
    del rng  # deterministic
    return text.lower().translate(LEET)


def synonym_swap(text: str, rng: random.Random) -> str:
    """Replace every word in :data:`SYNONYMS` (case-insensitive) by its swap."""
    del rng

    def swap(match: re.Match) -> str:
        return SYNONYMS.get(match.group(0).lower(), match.group(0))

    return _WORD.sub(swap, text)


TRANSFORMS: dict[str, Callable[[str, random.Random], str]] = {
    "case": random_case,
    "spacing": spacing,
    "leetspeak": leetspeak,
    "synonyms": synonym_swap,
}


def obfuscate(texts: list[str], transform: str, seed: int = 0) -> list[str]:
    """Apply one named transform to every text (``seed`` makes random ones reproducible)."""
    if transform not in TRANSFORMS:
        raise ValueError(f"unknown transform {transform!r}; expected one of {', '.join(TRANSFORMS)}")
    rng = random.Random(seed)
    return [TRANSFORMS[transform](text, rng) for text in texts]
