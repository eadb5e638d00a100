"""Rendering both images of each pair with the same seed, and encoding the training cache.

The renderer is a plain class (Ray wraps it as an actor pool at the edge, in ``cluster/``):
the pipeline is loaded once, then each call renders one shard. With caching on, it also
computes what training needs so that training never runs the VAE or the text encoders:

- VAE latents of both images, encoded from the 8-bit images as they are stored (posterior mean
  times the VAE scaling factor), ``[B, C, h, w]``;
- text-encoder outputs of both prompts ``[B, L, D]``; for SDXL both encoders concatenated, the
  pooled embedding ``[B, P]`` and the six time ids ``[B, 6]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

from alignguard.config.schema import ModelSection
from alignguard.families import load_pipeline
from alignguard.generation import generate
from alignguard.imaging import to_uint8

CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@torch.no_grad()
def encode_images(pipe: DiffusionPipeline, images: np.ndarray) -> torch.Tensor:
    """Scaled VAE latents ``[N, C, h, w]`` (float32, CPU) of uint8 images ``[N, H, W, 3]``."""
    vae = pipe.vae
    # SDXL's VAE overflows in half precision: it asks to be run in float32 (force_upcast).
    upcast = getattr(vae.config, "force_upcast", False) and vae.dtype != torch.float32
    dtype = torch.float32 if upcast else vae.dtype
    pixels = torch.from_numpy(images).to(vae.device).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0
    original_dtype = vae.dtype
    if upcast:
        vae.to(dtype)
    try:
        latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    finally:
        if upcast:
            vae.to(original_dtype)
    return latents.float().cpu()


@torch.no_grad()
def encode_prompts(
    pipe: DiffusionPipeline, prompts: Sequence[str], resolution: int
) -> dict[str, torch.Tensor]:
    """Text conditioning exactly as the pipeline computes it, without classifier-free guidance.

    Returns ``{"text": [N, L, D]}``, plus ``"pooled": [N, P]`` and ``"time_ids": [N, 6]`` for SDXL.
    """
    prompts = list(prompts)
    device = pipe.device
    if isinstance(pipe, StableDiffusionXLPipeline):
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        # (original size, crop top-left, target size): no crops, square images at the model's resolution.
        time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]] * len(prompts))
        return {"text": embeds.float().cpu(), "pooled": pooled.float().cpu(), "time_ids": time_ids.float()}
    embeds, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
    return {"text": embeds.float().cpu()}


class PairRenderer:
    """Renders shards of pairs: both members of a pair with the same seed."""

    def __init__(
        self,
        model: ModelSection,
        steps: int,
        guidance: float,
        cache_latents: bool = True,
        cache_dtype: str = "float32",
        generator_batch_size: int = 64,
    ) -> None:
        self.pipe = load_pipeline(model)
        self.steps = steps
        self.guidance = guidance
        self.cache_latents = cache_latents
        self.cache_dtype = CACHE_DTYPES[cache_dtype]
        self.resolution = model.resolution
        self.generator_batch_size = generator_batch_size

    def render(
        self, unsafe: Sequence[str], safe: Sequence[str], seeds: Sequence[int]
    ) -> dict[str, np.ndarray]:
        """Images (uint8 ``[B, H, W, 3]``) of both sides, and their cache tensors when enabled.

        Keys: ``unsafe_images``, ``safe_images``; with caching also ``latents_unsafe``,
        ``latents_safe``, ``text_unsafe``, ``text_safe`` (and ``pooled_*``, ``time_ids`` for SDXL).
        """
        count = len(seeds)
        if not (len(unsafe) == len(safe) == count):
            raise ValueError(f"{len(unsafe)} unsafe prompts, {len(safe)} safe prompts, {count} seeds")
        images = generate(
            self.pipe,
            [*unsafe, *safe],
            [*seeds, *seeds],
            self.steps,
            self.guidance,
            batch_size=self.generator_batch_size,
            height=self.resolution,
            width=self.resolution,
        )
        pixels = to_uint8(images)
        out = {"unsafe_images": pixels[:count], "safe_images": pixels[count:]}
        if self.cache_latents:
            out.update(self._cache(pixels, [*unsafe, *safe], count))
            out.update({f"empty_{name}": array for name, array in self.encode_empty_prompt().items()})
        return out

    def encode_empty_prompt(self) -> dict[str, np.ndarray]:
        """The conditioning of the empty prompt, used for caption dropout during training."""
        encoded = encode_prompts(self.pipe, [""], self.resolution)
        return {
            name: t.to(self.cache_dtype).float().numpy() for name, t in encoded.items() if name != "time_ids"
        }

    def _cache(self, pixels: np.ndarray, prompts: list[str], count: int) -> dict[str, np.ndarray]:
        latents = encode_images(self.pipe, pixels)
        encoded = encode_prompts(self.pipe, prompts, self.resolution)
        tensors = {"latents_unsafe": latents[:count], "latents_safe": latents[count:]}
        for name, tensor in encoded.items():
            if name == "time_ids":
                tensors["time_ids"] = tensor[:count]
                continue
            tensors[f"{name}_unsafe"], tensors[f"{name}_safe"] = tensor[:count], tensor[count:]
        # Round-trip through the cache dtype here, so what training reads equals what was checked.
        return {name: t.to(self.cache_dtype).float().numpy() for name, t in tensors.items()}
