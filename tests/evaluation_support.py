"""Test support (tests, not the product): stand-ins for the evaluators' pinned weights.

Random weights in the real layouts, so the loading and scoring code that real weights go through
runs unchanged in tests: a tiny CLIP (transformers layout), random Q16 prompt embeddings, random
FID Inception-v3 weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from alignguard.evaluation.clip import Q16_KEY
from alignguard.evaluation.inception import FIDInceptionV3


def save_random_q16_prompts(path: str | Path, dim: int, seed: int = 0) -> Path:
    """Random Q16 prompt embeddings ``[2, dim]``."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    save_file({Q16_KEY: torch.randn(2, dim, generator=generator)}, str(path))
    return Path(path)


def save_tiny_clip(directory: str | Path, seed: int = 0, image_size: int = 32) -> Path:
    """A tiny random CLIP in the transformers layout (model, tokenizer, image processor): the same
    loading and scoring code as a real CLIP."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from alignguard.models.tiny import tiny_tokenizer

    directory = Path(directory)
    tokenizer = tiny_tokenizer(directory)
    tokenizer.model_max_length = 77
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = CLIPConfig(
        text_config={"vocab_size": len(tokenizer), "max_position_embeddings": 77, **small, **special},
        vision_config={"image_size": image_size, "patch_size": 8, **small},
        projection_dim=16,
    )
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    crop = {"height": image_size, "width": image_size}
    CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=crop).save_pretrained(directory)
    return directory


def save_random_inception(path: str | Path, seed: int = 0) -> Path:
    """Random FID Inception weights in the real layout: conv weights drawn
    He-normal, BatchNorm statistics as initialised, so features are finite and vary by image."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = FIDInceptionV3(2048)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    state = {
        k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    }
    save_file(state, str(path))
    return Path(path)
