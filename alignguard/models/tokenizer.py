"""A CLIP tokenizer written locally from a word list (no hub download).

CLIP's tokenizer is byte-pair encoding over characters with ``</w>`` marking a word's end. We
write a vocabulary holding every character (with and without ``</w>``) and merges under which
each listed word is exactly one token; anything else falls back to characters.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterable
from pathlib import Path

from transformers import CLIPTokenizer

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
_WORD = re.compile(r"^[a-z0-9]+$")


def build_word_vocab(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merge list under which every word of ``words`` is one token.

    Words must be lower-case ``[a-z0-9]+``. For each word in turn we run CLIP's BPE with the
    merges so far and append merges that join whatever segments it reaches, left to right.
    Appended merges rank after all earlier ones, so they never fire inside a word that already
    became one token: a single pass makes every word whole.

    Returns:
        ``(vocab, merges)``; ids are dense from 0, ``BOS`` and ``EOS`` last.
    """
    unique = sorted(set(words))
    bad = [word for word in unique if not _WORD.match(word)]
    if bad:
        raise ValueError(f"tokenizer words must be lower-case [a-z0-9]+, got {bad[:5]}")
    chars = sorted({char for word in unique for char in word} | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab: dict[str, int] = {}
    for token in [*chars, *(char + "</w>" for char in chars)]:
        vocab.setdefault(token, len(vocab))
    ranks: dict[tuple[str, str], int] = {}
    for word in unique:
        segments = _bpe(word, ranks)
        prefix = segments[0]
        for segment in segments[1:]:
            ranks.setdefault((prefix, segment), len(ranks))
            prefix += segment
            vocab.setdefault(prefix, len(vocab))
    for special in (BOS, EOS):
        vocab.setdefault(special, len(vocab))
    merges = sorted(ranks, key=ranks.__getitem__)
    return vocab, merges


def _bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's byte-pair encoding of one word: repeatedly merge every occurrence of the
    lowest-ranked adjacent pair."""
    parts = [*word[:-1], word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = set(itertools.pairwise(parts))
        best = min(pairs, key=lambda pair: ranks.get(pair, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def write_word_tokenizer(words: Iterable[str], directory: str | Path, max_length: int) -> CLIPTokenizer:
    """Write ``vocab.json``/``merges.txt`` for ``words`` into ``directory`` and load a CLIPTokenizer.

    ``max_length`` must not exceed the text encoder's ``max_position_embeddings``, or the
    pipeline fails at generation time.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_word_vocab(words)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(
        str(directory / "vocab.json"),
        str(directory / "merges.txt"),
        model_max_length=max_length,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=EOS,
    )
    return tokenizer


def words_split(tokenizer: CLIPTokenizer, words: Iterable[str]) -> list[str]:
    """The words that the tokenizer does not encode as a single token."""
    return [word for word in words if len(tokenizer(word, add_special_tokens=False).input_ids) != 1]
