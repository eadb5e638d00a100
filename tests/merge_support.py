"""Test support (tests and benchmarks, not the product): random LoRA experts with real shapes.

- :func:`sd15_attention_shapes`: the (out, in) of every ``to_q/to_k/to_v/to_out.0`` of the SD1.5
  UNet, read from the model built on the ``meta`` device (no weights, no hub).
- :func:`random_lora`: an in-memory expert on given shapes.
- :func:`write_random_experts`: experts in a run directory exactly as training writes them
  (``alignguard.lora.add_lora`` + random factors + ``save_lora``, plus a verifying manifest).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping

import torch

from alignguard.config.schema import LoraSection
from alignguard.io import Manifest, RunDir, describe_outputs, write_manifest
from alignguard.merge.lora_file import LoraFile, LoraLayer

ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def linear_layer_shapes(
    unet: torch.nn.Module, targets: Iterable[str] = ATTENTION_TARGETS
) -> dict[str, tuple[int, int]]:
    """(out, in) of every Linear whose path ends with one of ``targets`` (peft's matching rule)."""
    targets = tuple(targets)
    return {
        name: (module.out_features, module.in_features)
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    }


def sd15_attention_shapes() -> dict[str, tuple[int, int]]:
    """The 128 attention projections of the SD1.5 UNet (93.5 M weights), built on ``meta``."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)  # SD1.x defaults otherwise
    return linear_layer_shapes(unet)


def random_lora(
    shapes: Mapping[str, tuple[int, int]], rank: int, alpha: float, seed: int, up_std: float = 0.01
) -> LoraFile:
    """A: N(0, 1/r) (peft's gaussian init), B: N(0, up_std²) — a "trained" expert stand-in."""
    generator = torch.Generator().manual_seed(seed)
    layers = {
        name: LoraLayer(
            down=torch.randn(rank, inp, generator=generator) / rank**0.5,
            up=torch.randn(out, rank, generator=generator) * up_std,
            scale=alpha / rank,
        )
        for name, (out, inp) in sorted(shapes.items())
    }
    return LoraFile(layers=layers, metadata={"r": rank, "lora_alpha": alpha})


@torch.no_grad()
def write_random_experts(
    run: RunDir,
    unet: torch.nn.Module,
    names: Iterable[str],
    spec: LoraSection,
    seed: int,
    up_std: float = 0.01,
) -> dict[str, str]:
    """Random experts under ``<run>/experts/<name>/`` through the training code path.

    ``unet`` gets a peft adapter (``add_lora``); each expert redraws A and B and is saved with
    ``save_lora``. Returns name → file path relative to ``run``."""
    from alignguard.lora import LORA_WEIGHT_NAME, add_lora, save_lora

    add_lora(unet, spec)
    generator = torch.Generator().manual_seed(seed)
    paths = {}
    for name in names:
        for param_name, param in unet.named_parameters():
            if "lora_A" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) / spec.rank**0.5)
            elif "lora_B" in param_name:
                param.copy_(torch.randn(param.shape, generator=generator) * up_std)
        expert_dir = run.sub("experts", name)
        with tempfile.TemporaryDirectory() as tmp:
            expert_dir.put_file(save_lora(unet, tmp, spec), LORA_WEIGHT_NAME)
        outputs = describe_outputs(expert_dir, [LORA_WEIGHT_NAME])
        write_manifest(
            expert_dir, Manifest(stage="random_expert", config={}, config_hash="", outputs=outputs)
        )
        paths[name] = f"experts/{name}/{LORA_WEIGHT_NAME}"
    return paths
