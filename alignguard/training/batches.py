"""Deterministic preference batches from the synthesis cache.

A *preference item* is (pair, caption side): the safe image w is preferred and the unsafe image
l rejected, conditioned on the unsafe prompt — and, with the ``both_prompts`` strategy (what the
released CoProV2 table does), on the safe prompt as well, so every pair appears twice.

The batch of step s on rank r is a pure function of (seed, s, r, world size): items are walked
in per-epoch permutations, global batch after global batch, each rank taking its slice. Resuming
at step s therefore reproduces exactly the batches a run without interruption would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignguard.synthesis.store import PairCache


@dataclass(frozen=True)
class PreferenceBatch:
    """Tensors of one micro-batch (``B`` items): preferred and rejected latents ``[B, C, h, w]``,
    text conditioning ``[B, L, D]``, and for SDXL pooled embeddings ``[B, P]`` and time ids ``[B, 6]``."""

    latents_w: torch.Tensor
    latents_l: torch.Tensor
    text: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    benign_caption: torch.Tensor | None = None  # [B] bool: conditioned on the safe prompt or the empty one

    def to(self, device: torch.device, dtype: torch.dtype) -> PreferenceBatch:
        def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else tensor.to(device=device, dtype=dtype)

        moved = (move(t) for t in (self.latents_w, self.latents_l, self.text, self.pooled, self.time_ids))
        mask = None if self.benign_caption is None else self.benign_caption.to(device)
        return PreferenceBatch(*moved, benign_caption=mask)


class PreferenceSampler:
    def __init__(
        self,
        cache: PairCache,
        strategy: str,
        caption_dropout: float,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(cache) == 0:
            raise ValueError("no pairs to train on (is the category in data.categories and synthesized?)")
        if strategy not in ("unsafe_prompt", "both_prompts"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.cache, self.caption_dropout, self.batch_size = cache, caption_dropout, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        sides = ("unsafe", "safe") if strategy == "both_prompts" else ("unsafe",)
        self.items = [(index, side) for side in sides for index in range(len(cache))]

    def indices(self, step: int) -> list[tuple[int, str]]:
        """The (pair index, caption side) items of this rank's micro-batch at ``step``."""
        count, global_batch = len(self.items), self.batch_size * self.world_size
        start = step * global_batch + self.rank * self.batch_size
        chosen = []
        for position in range(start, start + self.batch_size):
            epoch, offset = divmod(position, count)
            chosen.append(self.items[self._permutation(epoch)[offset]])
        return chosen

    def batch(self, step: int) -> PreferenceBatch:
        chosen = self.indices(step)
        pairs = np.array([index for index, _ in chosen])
        tensors = self.cache.tensors
        text = np.stack([tensors[f"text_{side}"][index] for index, side in chosen])
        pooled = (
            np.stack([tensors[f"pooled_{side}"][index] for index, side in chosen])
            if "pooled_unsafe" in tensors
            else None
        )
        drop = (
            np.random.default_rng([self.seed, 1, step, self.rank]).random(len(chosen)) < self.caption_dropout
        )
        text[drop] = self.cache.empty["text"][0]
        if pooled is not None:
            pooled[drop] = self.cache.empty["pooled"][0]
        return PreferenceBatch(
            latents_w=torch.from_numpy(tensors["latents_safe"][pairs]),
            latents_l=torch.from_numpy(tensors["latents_unsafe"][pairs]),
            text=torch.from_numpy(text),
            pooled=None if pooled is None else torch.from_numpy(pooled),
            time_ids=torch.from_numpy(tensors["time_ids"][pairs]) if "time_ids" in tensors else None,
            benign_caption=torch.from_numpy(np.array([side == "safe" for _, side in chosen]) | drop),
        )

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.items))
