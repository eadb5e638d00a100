"""Undoing simple obfuscations before a prompt is embedded.

The embedding model reads ``4 m4n w17h 4 kn1f3`` as noise and ``k n i f e`` as five letters: on
leetspeak the guard's recall was 0.1 % and on spread-out letters its false alarms quadrupled (see
BENCHMARKS.md). :func:`canonical_prompt` maps them back: NFKC, leet digits and symbols inside
words (and everywhere when the prompt is mostly leet) to letters, and runs of single letters
joined into words. Clean prompts pass through unchanged.
"""

from __future__ import annotations

import re
import unicodedata

_LEET = {"4": "a", "@": "a", "3": "e", "1": "i", "!": "i", "0": "o", "5": "s", "$": "s", "7": "t", "8": "b"}
_LEET_CHARS = re.escape("".join(_LEET))
_TOKEN = re.compile(r"\S+")
_INTERIOR = re.compile(rf"[A-Za-z][{_LEET_CHARS}]+[A-Za-z]")  # "n4k", "l00d": leet between letters
_TRAILING = ".,;:?!"
# "k n i f e" (and "a l l e y ." with the full stop spread too)
_LETTER_RUN = re.compile(r"(?<![\w])(?:[A-Za-z] ){2,}[A-Za-z](?: [.,;:!?](?!\S))?(?![\w])")
_MOSTLY_LEET = 0.3


def _decode(token: str) -> str:
    # Keep a token's trailing punctuation ("kn1f3." -> "knife."), decode the rest.
    core = token.rstrip(_TRAILING)
    return "".join(_LEET.get(ch, ch) for ch in core) + token[len(core) :]


def _is_leet(token: str) -> bool:
    return bool(_INTERIOR.search(token.rstrip(_TRAILING)))


def _decode_leet(text: str) -> str:
    """Decode tokens with leet between letters ("n4ked"); when a third of the tokens are such,
    the prompt is leet throughout and every token with leet characters is decoded ("4", "574nd5").
    "3D", "7-Eleven" or "R2-D2" in an otherwise plain prompt stay as they are."""
    tokens = _TOKEN.findall(text)
    everywhere = bool(tokens) and sum(map(_is_leet, tokens)) / len(tokens) >= _MOSTLY_LEET

    def replace(match: re.Match) -> str:
        token = match.group(0)
        return _decode(token) if everywhere or _is_leet(token) else token

    return _TOKEN.sub(replace, text)


def canonical_prompt(text: str) -> str:
    """The prompt with case-preserving de-obfuscation applied (see the module doc)."""
    text = unicodedata.normalize("NFKC", text)
    text = _decode_leet(text)
    text = _LETTER_RUN.sub(lambda m: m.group(0).replace(" ", ""), text)
    return " ".join(text.split())
