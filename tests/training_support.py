"""Test support for training: a random preference-pair cache in the synthesis cache's layout."""

from __future__ import annotations

import numpy as np

from alignguard.synthesis.store import PairCache


def random_pair_cache(n: int, seed: int = 0) -> PairCache:
    """``n`` pairs of random 4×16×16 latents and 16×32 text embeddings, all labelled hate."""
    rng = np.random.default_rng(seed)
    tensors = {
        "latents_safe": rng.normal(size=(n, 4, 16, 16)).astype(np.float32),
        "latents_unsafe": rng.normal(size=(n, 4, 16, 16)).astype(np.float32),
        "text_safe": rng.normal(size=(n, 16, 32)).astype(np.float32),
        "text_unsafe": rng.normal(size=(n, 16, 32)).astype(np.float32),
    }
    return PairCache(
        [str(i) for i in range(n)], [["hate"]] * n, tensors, {"text": np.zeros((1, 16, 32), np.float32)}
    )
