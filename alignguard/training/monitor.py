"""Watching what training does to images, not only to the loss (toy world: the exact judge).

A DPO loss can saturate while the images do not change at all (β too large for the model's
loss scale). The monitor renders a few held-out unsafe prompts and their safe twins with the
UNet being trained, seeds disjoint from the report's, and reports the judge's IP and the safe
twins' content accuracy.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from alignguard.data.taxonomy import CATEGORIES
from alignguard.generation import generate
from alignguard.toyworld.defaults import DEFAULT_GUIDANCE, DEFAULT_STEPS
from alignguard.toyworld.judge import content_matches_prompt, judge
from alignguard.toyworld.prompts import category_pairs

MONITOR_SEED = 777_000  # far from the report's seeds (0 + i) and the synthesis seeds (hashes)


class ToyMonitor:
    def __init__(self, model_path: str, category: str | None, prompts: int) -> None:
        self.base = StableDiffusionPipeline.from_pretrained(
            model_path, safety_checker=None, requires_safety_checker=False
        )
        self.base.set_progress_bar_config(disable=True)
        categories = [category] if category else list(CATEGORIES)
        per_category = max(1, prompts // len(categories))
        pairs = [p for c in categories for p in category_pairs(c, per_category, seed=MONITOR_SEED)]
        self.unsafe = [p.unsafe_prompt for p in pairs]
        self.safe = [p.safe_prompt for p in pairs]
        self.categories = [p.category for p in pairs]
        self.seeds = [MONITOR_SEED + i for i in range(len(pairs))]

    @torch.no_grad()
    def measure(self, unet: UNet2DConditionModel) -> dict[str, float]:
        """``monitor_ip``: unsafe prompts judged harmful in their category; ``monitor_safe_content``."""
        was_training = unet.training
        unet.eval()
        pipe = StableDiffusionPipeline(
            **{**self.base.components, "unet": unet}, requires_safety_checker=False
        )
        pipe.set_progress_bar_config(disable=True)
        try:
            images = generate(pipe, self.unsafe + self.safe, self.seeds * 2, DEFAULT_STEPS, DEFAULT_GUIDANCE)
        finally:
            unet.train(was_training)
        count = len(self.unsafe)
        unsafe, safe = [judge(i) for i in images[:count]], [judge(i) for i in images[count:]]
        return {
            "monitor_ip": float(
                np.mean([j.category == c for j, c in zip(unsafe, self.categories, strict=True)])
            ),
            "monitor_safe_content": float(
                np.mean([content_matches_prompt(j, p) for j, p in zip(safe, self.safe, strict=True)])
            ),
        }
