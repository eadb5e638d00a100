"""Deterministic preference batches from the synthesis cache.

A *preference item* is (pair, caption side): the safe image w is preferred and the unsafe image
l rejected, conditioned on the unsafe prompt — and, with the ``both_prompts`` strategy (what the
released CoProV2 table does), on the safe prompt as well, so every pair appears twice.

Each batch also carries *preservation* inputs: safe images with their safe prompts, drawn from
a (usually wider) preservation set — by default every category's pairs — and, on every other
row, the empty prompt, whose prediction enters every image through classifier-free guidance.
The loss may ask the policy to leave its predictions there unchanged.

The batch of step s on rank r is a pure function of (seed, s, r, world size): items are walked
in per-epoch permutations, global batch after global batch, each rank taking its slice. Resuming
at step s therefore reproduces exactly the batches a run without interruption would have seen.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from alignguard.synthesis.store import PairCache


@dataclass(frozen=True)
class PreferenceBatch:
    """One micro-batch of ``B`` items: preferred and rejected latents ``[B, C, h, w]``, text
    conditioning ``[B, L, D]`` (SDXL: pooled ``[B, P]``, time ids ``[B, 6]``), and the
    preservation inputs (latents, text, pooled) of the same sizes."""

    latents_w: torch.Tensor
    latents_l: torch.Tensor
    text: torch.Tensor
    pooled: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None
    preserve_latents: torch.Tensor | None = None
    preserve_text: torch.Tensor | None = None
    preserve_pooled: torch.Tensor | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> PreferenceBatch:
        moved = {
            f.name: None
            if getattr(self, f.name) is None
            else getattr(self, f.name).to(device=device, dtype=dtype)
            for f in fields(self)
        }
        return PreferenceBatch(**moved)


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
        preserve: PairCache | None = None,
    ) -> None:
        if len(cache) == 0:
            raise ValueError("no pairs to train on (is the category in data.categories and synthesized?)")
        if strategy not in ("unsafe_prompt", "both_prompts"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.cache, self.caption_dropout, self.batch_size = cache, caption_dropout, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.preserve = preserve if preserve is not None and len(preserve) else cache
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
        sdxl = "pooled_unsafe" in tensors
        text = np.stack([tensors[f"text_{side}"][index] for index, side in chosen])
        pooled = np.stack([tensors[f"pooled_{side}"][index] for index, side in chosen]) if sdxl else None
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
            **self._preservation(step, sdxl),
        )

    def _preservation(self, step: int, sdxl: bool) -> dict[str, torch.Tensor | None]:
        """Safe images with their safe prompts; every other row with the empty prompt instead."""
        source = self.preserve
        picks = np.random.default_rng([self.seed, 2, step, self.rank]).integers(
            0, len(source), self.batch_size
        )
        text = source.tensors["text_safe"][picks].copy()
        text[1::2] = source.empty["text"][0]
        pooled = None
        if sdxl:
            pooled = source.tensors["pooled_safe"][picks].copy()
            pooled[1::2] = source.empty["pooled"][0]
        return {
            "preserve_latents": torch.from_numpy(source.tensors["latents_safe"][picks]),
            "preserve_text": torch.from_numpy(text),
            "preserve_pooled": None if pooled is None else torch.from_numpy(pooled),
        }

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 0, epoch]).permutation(len(self.items))
