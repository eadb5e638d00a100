"""Batched, seed-exact generation with any diffusers text-to-image pipeline.

Each image gets its own ``torch.Generator`` seeded with its seed, so an image depends only on
(model, prompt, seed, steps, guidance) — not on batch size or on which other prompts share its
batch. That is what makes paired synthesis, caching and before/after comparisons exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline


@torch.no_grad()
def generate(
    pipe: DiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance: float,
    batch_size: int = 32,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
) -> np.ndarray:
    """Images ``[N, H, W, 3]`` float32 in [0, 1] for ``prompts[i]`` with ``seeds[i]``."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    if not prompts:
        raise ValueError("no prompts to generate")
    device = pipe.device if pipe.device.type != "meta" else torch.device("cpu")
    generator_device = "cpu" if device.type == "mps" else device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        chunk_prompts = list(prompts[start : start + batch_size])
        generators = [
            torch.Generator(generator_device).manual_seed(int(s)) for s in seeds[start : start + batch_size]
        ]
        output = pipe(
            chunk_prompts,
            negative_prompt=[negative_prompt] * len(chunk_prompts) if negative_prompt is not None else None,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=generators,
            height=height,
            width=width,
            output_type="np",
        )
        chunks.append(np.asarray(output.images, dtype=np.float32))
    return np.concatenate(chunks)
