"""LoRA adapters on the UNet through peft, saved in the diffusers format.

The saved file is what ``StableDiffusionPipeline.load_lora_weights`` reads: keys
``unet.<module path>.lora_A.weight`` / ``lora_B.weight`` plus the adapter's alpha and rank in
the safetensors metadata, written by diffusers' own ``save_lora_weights``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict

from alignguard.config.schema import LoraSection

ADAPTER_NAME = "default"
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def lora_config(spec: LoraSection) -> LoraConfig:
    """peft's config for ``spec``: ``gaussian`` init draws A ~ N(0, 1/r) and sets B = 0, as the
    released AlignGuard code does, so a fresh adapter changes nothing."""
    return LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        target_modules=list(spec.target_modules),
        init_lora_weights="gaussian" if spec.init == "gaussian" else True,
    )


def add_lora(unet: UNet2DConditionModel, spec: LoraSection) -> UNet2DConditionModel:
    """Freeze the UNet and add a trainable LoRA adapter named ``default``."""
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(spec), adapter_name=ADAPTER_NAME)
    matched = [name for name, _ in unet.named_modules() if name.endswith(".lora_A")]
    if not matched:
        raise ValueError(f"training.lora.target_modules {list(spec.target_modules)} matched no UNet module")
    return unet


def unet_lora_state_dict(unet: UNet2DConditionModel) -> dict[str, torch.Tensor]:
    """The adapter's weights in diffusers naming (without the ``unet.`` prefix)."""
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME))


def save_lora(unet: UNet2DConditionModel, directory: str | Path, spec: LoraSection) -> Path:
    """Write ``<directory>/pytorch_lora_weights.safetensors`` in the diffusers format.

    diffusers writes the file in place; callers that need atomicity write into a staging
    directory and publish it (see :mod:`alignguard.io`)."""
    directory = Path(directory)
    state = {
        name: tensor.detach().to(torch.float32).cpu().contiguous()
        for name, tensor in unet_lora_state_dict(unet).items()
    }
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(directory),
        unet_lora_layers=state,
        weight_name=LORA_WEIGHT_NAME,
        safe_serialization=True,
        unet_lora_adapter_metadata={
            "r": spec.rank,
            "lora_alpha": spec.alpha,
            "target_modules": list(spec.target_modules),
        },
    )
    return directory / LORA_WEIGHT_NAME
