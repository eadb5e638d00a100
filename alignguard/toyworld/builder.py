"""Training the toy text-to-image model from scratch on CPU, in the exact SD1.5 layout.

The result is an ordinary diffusers directory: ``StableDiffusionPipeline.from_pretrained(path)``
loads it like SD1.5 (AutoencoderKL, UNet2DConditionModel, CLIPTextModel, CLIPTokenizer, DDIM).

Schedule: (1) the VAE learns to reconstruct rendered scenes (32 px images, 8x8x4 latents);
(2) its latent scale is measured and stored as ``scaling_factor``, as SD does; (3) the UNet and
the text encoder learn epsilon-prediction DDPM on a pool of rendered scenes whose latents are
encoded once, with caption dropout for classifier-free guidance and an EMA of the weights.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from alignguard.models.tokenizer import write_word_tokenizer
from alignguard.toyworld.defaults import BuildSchedule
from alignguard.toyworld.prompts import fill_template
from alignguard.toyworld.world import (
    IMAGE_SIZE,
    OBJECT_COLOURS,
    SHAPES,
    TEMPLATES,
    WORD_COLOURS,
    render,
    sample_layout,
    vocabulary,
)

MAX_PROMPT_TOKENS = 16
TEXT_HIDDEN = 64
# SD1.5's noise schedule, so that schedulers, guidance and DPO see the familiar dynamics.
NOISE_SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


@dataclass
class Scenes:
    """A batch of rendered scenes: images ``[B, 3, H, W]`` in [-1, 1] and their prompts."""

    images: torch.Tensor
    prompts: list[str]


def render_scenes(n: int, rng: np.random.Generator) -> Scenes:
    """``n`` random scenes over every attribute word, shape, template and layout."""
    words = sorted(WORD_COLOURS)
    images, prompts = [], []
    for _ in range(n):
        word = words[int(rng.integers(len(words)))]
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        images.append(render(shape, WORD_COLOURS[word], sample_layout(rng)))
        prompts.append(fill_template(template, word, shape))
    array = np.stack(images).transpose(0, 3, 1, 2) * 2.0 - 1.0
    return Scenes(torch.from_numpy(array.astype(np.float32)), prompts)


def new_vae() -> AutoencoderKL:
    """32 px images to 8x8x4 latents (two downsamplings)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=IMAGE_SIZE,
    )


def new_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=16,
        norm_num_groups=16,
    )


def new_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_PROMPT_TOKENS,
        projection_dim=TEXT_HIDDEN,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def new_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**NOISE_SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def train_vae(vae: AutoencoderKL, schedule: BuildSchedule, rng: np.random.Generator) -> float:
    """Reconstruction MSE plus a tiny KL term; returns the final reconstruction MSE."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=schedule.vae_lr)
    vae.train()
    mse = float("nan")
    bar = tqdm(range(schedule.vae_steps), desc="toy VAE", unit="step")
    for step in bar:
        images = render_scenes(schedule.vae_batch_size, rng).images
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss_mse = F.mse_loss(reconstruction, images)
        loss = loss_mse + schedule.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = schedule.vae_lr * _cosine(step, schedule.vae_steps, 0)
        mse = loss_mse.item() / 4  # images are in [-1, 1]: report MSE in [0, 1] units
        bar.set_postfix(mse=f"{mse:.4f}")
    vae.eval()
    return mse


@torch.no_grad()
def encode_pool(vae: AutoencoderKL, scenes: Scenes, batch_size: int = 256) -> torch.Tensor:
    """Posterior means of the pool's images, unscaled ``[N, 4, 8, 8]``."""
    chunks = [
        vae.encode(scenes.images[i : i + batch_size]).latent_dist.mean
        for i in range(0, len(scenes.prompts), batch_size)
    ]
    return torch.cat(chunks)


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
    ).input_ids


def train_denoiser(
    unet: UNet2DConditionModel,
    text_encoder: CLIPTextModel,
    latents: torch.Tensor,
    token_ids: torch.Tensor,
    empty_ids: torch.Tensor,
    schedule: BuildSchedule,
    rng: np.random.Generator,
    on_checkpoint: Callable[[int], None] | None = None,
) -> tuple[dict, dict]:
    """DDPM epsilon-prediction training; returns the EMA state dicts (unet, text encoder)."""
    noise_scheduler = DDPMScheduler(**NOISE_SCHEDULE, num_train_timesteps=1000)
    params = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(params, lr=schedule.unet_lr, weight_decay=0.0)
    ema_unet, ema_text = (
        copy.deepcopy(unet).requires_grad_(False),
        copy.deepcopy(text_encoder).requires_grad_(False),
    )
    generator = torch.Generator().manual_seed(schedule.seed)
    unet.train()
    text_encoder.train()
    bar = tqdm(range(schedule.unet_steps), desc="toy UNet", unit="step")
    running = None
    for step in bar:
        index = torch.from_numpy(rng.integers(0, len(latents), schedule.batch_size))
        ids = token_ids[index].clone()
        dropped = torch.from_numpy(rng.random(schedule.batch_size) < schedule.caption_dropout)
        ids[dropped] = empty_ids
        x0 = latents[index]
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(0, 1000, (schedule.batch_size,), generator=generator)
        noisy = noise_scheduler.add_noise(x0, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = schedule.unet_lr * _cosine(step, schedule.unet_steps, schedule.warmup_steps)
        _ema_update(ema_unet, unet, schedule.ema_decay, step)
        _ema_update(ema_text, text_encoder, schedule.ema_decay, step)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.set_postfix(loss=f"{running:.4f}")
        if on_checkpoint is not None:
            on_checkpoint(step + 1)
    return ema_unet.state_dict(), ema_text.state_dict()


def build_toy_model(out_dir: str | Path, schedule: BuildSchedule | None = None) -> dict:
    """Train the toy model and save it as a diffusers directory; returns build figures."""
    schedule = schedule or BuildSchedule()
    torch.manual_seed(schedule.seed)
    rng = np.random.default_rng(schedule.seed)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = write_word_tokenizer(vocabulary(), tmp, max_length=MAX_PROMPT_TOKENS)
        vae, unet, text_encoder = new_vae(), new_unet(), new_text_encoder(tokenizer)
        vae_mse = train_vae(vae, schedule, rng)
        vae_seconds = time.perf_counter() - start
        pool = render_scenes(schedule.pool_size, rng)
        raw_latents = encode_pool(vae, pool)
        scaling_factor = float(1.0 / raw_latents.std())
        vae.register_to_config(scaling_factor=scaling_factor)
        token_ids = tokenize(tokenizer, pool.prompts)
        empty_ids = tokenize(tokenizer, [""])[0]
        unet_state, text_state = train_denoiser(
            unet, text_encoder, raw_latents * scaling_factor, token_ids, empty_ids, schedule, rng
        )
        unet.load_state_dict(unet_state)
        text_encoder.load_state_dict(text_state)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text_encoder.eval(),
            tokenizer=tokenizer,
            unet=unet.eval(),
            scheduler=new_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(str(out_dir), safe_serialization=True)
    return {
        "vae_mse": vae_mse,
        "scaling_factor": scaling_factor,
        "vae_seconds": vae_seconds,
        "total_seconds": time.perf_counter() - start,
        "unet_parameters": sum(p.numel() for p in unet.parameters()),
        "vae_parameters": sum(p.numel() for p in vae.parameters()),
        "text_encoder_parameters": sum(p.numel() for p in text_encoder.parameters()),
        "colours": len(OBJECT_COLOURS),
    }


def _cosine(step: int, total: int, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float, step: int) -> None:
    # Warm up the decay so early weights do not dominate a short schedule.
    effective = min(decay, (1 + step) / (10 + step))
    for ema_param, param in zip(ema.parameters(), model.parameters(), strict=True):
        ema_param.lerp_(param.detach(), 1 - effective)
