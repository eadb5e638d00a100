"""Full-size SD1.5 / SDXL architectures with random weights, for GPU benchmarks without a hub.

Same layer shapes and FLOPs as the real models (SD1.5: UNet 860M, 64x64x4 latents at 512 px,
CLIP ViT-L/14 text tower; SDXL: UNet 2.6B, two text encoders); the tokenizer is our locally
written word tokenizer padded to CLIP's 77 tokens (the text towers keep CLIP's 49,408 vocabulary).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from alignguard.models.tiny import TINY_WORDS
from alignguard.models.tokenizer import write_word_tokenizer

# Forward FLOPs of one UNet evaluation (torch FLOP counter, shared/notes/performance.md).
UNET_FORWARD_TFLOP = {"sd15": 0.803, "sdxl": 6.761}
CLIP_VOCAB = 49_408


def _clip_text_config(hidden: int, layers: int, heads: int, projection: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=projection,
        hidden_act="gelu",
    )


def _sd_vae() -> AutoencoderKL:
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )


def _word_tokenizer() -> CLIPTokenizer:
    """A 77-token word-level tokenizer; its files go to a temporary directory, removed once read."""
    with tempfile.TemporaryDirectory(prefix="alignguard-tokenizer-") as scratch:
        return write_word_tokenizer(TINY_WORDS, scratch, max_length=77)


def random_sd15_pipeline(dtype: torch.dtype = torch.float32) -> StableDiffusionPipeline:
    """SD1.5's architecture (UNet, VAE, CLIP ViT-L/14 text encoder) with random weights."""
    tokenizer = _word_tokenizer()
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    return StableDiffusionPipeline(
        vae=_sd_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(768, 12, 12, 768)),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(dtype=dtype)


def random_sdxl_pipeline(dtype: torch.dtype = torch.float32) -> StableDiffusionXLPipeline:
    """SDXL base's architecture with random weights (two text encoders, text_time conditioning)."""
    tokenizer = _word_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=128,
        cross_attention_dim=2048,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    return StableDiffusionXLPipeline(
        vae=_sd_vae(),
        text_encoder=CLIPTextModel(_clip_text_config(768, 12, 12, 768)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_text_config(1280, 32, 20, 1280)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            timestep_spacing="leading",
            steps_offset=1,
        ),
    ).to(dtype=dtype)


RANDOM_PIPELINES = {"sd15": random_sd15_pipeline, "sdxl": random_sdxl_pipeline}


def save_random_pipeline(family: str, directory: str | Path) -> Path:
    """Write a random full-size pipeline of ``family`` (a key of :data:`RANDOM_PIPELINES`) in
    diffusers layout (fp32 on disk); returns the directory."""
    if family not in RANDOM_PIPELINES:
        raise ValueError(f"no random full-size {family!r} architecture (known: {sorted(RANDOM_PIPELINES)})")
    pipe = RANDOM_PIPELINES[family]()
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)
