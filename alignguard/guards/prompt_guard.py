"""The prompt guard: MiniLM sentence embeddings + the trained head -> per-category scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from alignguard.data.taxonomy import CATEGORIES
from alignguard.guards.canonical import canonical_prompt
from alignguard.guards.embedding import Embedder, shared_embedder
from alignguard.guards.head import HeadBundle, Thresholds, load_head
from alignguard.guards.policy import PromptScores

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
SHIPPED_HEAD = ASSETS_DIR / "prompt_guard_head.safetensors"
SHIPPED_REPORT = ASSETS_DIR / "prompt_guard_head.json"


def scores_from_logits(logits: torch.Tensor) -> list[PromptScores]:
    """``[B, 8]`` head logits -> scores: unsafe = sigmoid(l0); category c = unsafe x sigmoid(l_c)."""
    probs = torch.sigmoid(logits.float())
    unsafe = probs[:, 0]
    joint = unsafe[:, None] * probs[:, 1:]  # P(unsafe and c) = P(unsafe) P(c | unsafe)
    return [
        PromptScores(float(u), {c: float(s) for c, s in zip(CATEGORIES, row.tolist(), strict=True)})
        for u, row in zip(unsafe, joint, strict=True)
    ]


class PromptGuard:
    """Scores prompts offline. ``head_path`` defaults to the head shipped in this package;
    ``canonicalize`` undoes leetspeak and spread-out letters first (:mod:`.canonical`)."""

    def __init__(
        self,
        head_path: str | Path | None = None,
        embedder: Embedder | None = None,
        batch_size: int = 64,
        canonicalize: bool = True,
    ) -> None:
        self.bundle: HeadBundle = load_head(head_path or SHIPPED_HEAD)
        self.embedder = embedder or shared_embedder()
        self.batch_size = batch_size
        self.canonicalize = canonicalize

    @property
    def thresholds(self) -> Thresholds:
        """The thresholds calibrated on the held-out split when the head was trained."""
        return self.bundle.thresholds

    @torch.inference_mode()
    def score_embeddings(self, embeddings: torch.Tensor) -> list[PromptScores]:
        """Scores of precomputed unit-norm embeddings ``[N, 384]``."""
        return scores_from_logits(self.bundle.head(embeddings))

    def score(self, prompts: Sequence[str]) -> list[PromptScores]:
        """Scores of ``prompts``, in order."""
        for prompt in prompts:
            if not isinstance(prompt, str):
                raise TypeError(f"prompts must be strings, got {type(prompt).__name__}")
        texts = [canonical_prompt(p) for p in prompts] if self.canonicalize else list(prompts)
        return self.score_embeddings(self.embedder.embed(texts, batch_size=self.batch_size))
