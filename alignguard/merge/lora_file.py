"""Diffusers-format UNet LoRA files: read them as per-layer factors, write merged ones.

A file holds, per LoRA'd linear layer ``unet.<module path>``, the down factor A ``[r, in]`` and
the up factor B ``[out, r]`` (keys ``.lora.down.weight`` / ``.lora.up.weight``, or peft's
``.lora_A.weight`` / ``.lora_B.weight``), and in the safetensors metadata
``lora_adapter_metadata`` the peft config (``unet.r``, ``unet.lora_alpha``, optional
``unet.rank_pattern`` / ``unet.alpha_pattern`` / ``unet.use_rslora``). The layer's weight
update is ΔW = scale · B·A with scale = α/r (α/√r under rsLoRA), α and r resolved per module
exactly as peft resolves them.

Merged files are written with every scale folded into the factors and α = r per module
(scale 1), ranks that differ per layer in ``rank_pattern``/``alpha_pattern``: stock
``pipe.load_lora_weights`` then applies exactly ΔW = B·A, whatever the layer's rank.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

METADATA_KEY = "lora_adapter_metadata"
UNET_PREFIX = "unet."
_FACTOR_SUFFIXES = {
    ".lora.down.weight": "down",
    ".lora.up.weight": "up",
    ".lora_A.weight": "down",
    ".lora_B.weight": "up",
}


class LoraFormatError(ValueError):
    """A LoRA file this engine cannot read exactly; the message names the file and key."""


@dataclass(frozen=True)
class LoraLayer:
    """One LoRA'd linear layer: ΔW = scale · up @ down."""

    down: torch.Tensor  # A [r, in]
    up: torch.Tensor  # B [out, r]
    scale: float

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the layer's weight."""
        return int(self.up.shape[0]), int(self.down.shape[1])

    def delta(self, device: torch.device | str | None = None) -> torch.Tensor:
        """ΔW ``[out, in]`` in fp32 (never A or B alone: merging acts on this)."""
        up = self.up.to(device=device, dtype=torch.float32)
        down = self.down.to(device=device, dtype=torch.float32)
        return (up * self.scale) @ down


@dataclass(frozen=True)
class LoraFile:
    """A UNet LoRA: layers keyed by module path (``down_blocks.1....attn2.to_k``, no ``unet.``)."""

    layers: dict[str, LoraLayer]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ranks(self) -> dict[str, int]:
        return {name: layer.rank for name, layer in self.layers.items()}


def read_lora_bytes(data: bytes, source: str = "<bytes>") -> LoraFile:
    """Parse a diffusers-format UNet LoRA safetensors file (see the module docstring)."""
    try:
        tensors = load_safetensors_bytes(data)
        header_metadata = _safetensors_metadata(data)
    except Exception as exc:  # safetensors raises its own error types for corrupt data
        raise LoraFormatError(f"{source}: not a safetensors file ({exc})") from None
    config = _adapter_config(header_metadata, source)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    alphas: dict[str, float] = {}
    for key, tensor in tensors.items():
        if not key.startswith(UNET_PREFIX):
            raise LoraFormatError(f"{source}: key {key!r} is not a UNet LoRA key (only UNet LoRAs merge)")
        name = key[len(UNET_PREFIX) :]
        if name.endswith(".alpha"):  # kohya-style network alphas
            alphas[name[: -len(".alpha")]] = float(tensor.item())
            continue
        suffix = next((s for s in _FACTOR_SUFFIXES if name.endswith(s)), None)
        if suffix is None:
            raise LoraFormatError(f"{source}: unexpected key {key!r} (not a LoRA up/down weight)")
        if tensor.ndim != 2:
            raise LoraFormatError(
                f"{source}: {key!r} has shape {tuple(tensor.shape)}; only Linear LoRAs merge"
            )
        factors.setdefault(name[: -len(suffix)], {})[_FACTOR_SUFFIXES[suffix]] = tensor
    if not factors:
        raise LoraFormatError(f"{source}: no LoRA weights in the file")
    layers = {}
    for module, pair in sorted(factors.items()):
        if set(pair) != {"down", "up"}:
            raise LoraFormatError(f"{source}: {module} has only its {'/'.join(pair)} factor")
        down, up = pair["down"], pair["up"]
        if down.shape[0] != up.shape[1]:
            raise LoraFormatError(
                f"{source}: {module}: down {tuple(down.shape)} and up {tuple(up.shape)} ranks differ"
            )
        layers[module] = LoraLayer(down=down, up=up, scale=_scale(module, down.shape[0], config, alphas))
    return LoraFile(layers=layers, metadata=config)


def lora_file_bytes(factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> bytes:
    """A diffusers-format file for ``{module: (up [out, k], down [k, in])}`` with ΔW = up @ down.

    α = k per module (scale 1); the most common rank is ``r``, the others go to
    ``rank_pattern``/``alpha_pattern`` keyed by full module path; ``target_modules`` lists the
    full paths, so no other layer of the UNet gets an adapter.
    """
    if not factors:
        raise ValueError("no layers to write")
    ranks = {name: int(down.shape[0]) for name, (_, down) in factors.items()}
    if min(ranks.values()) < 1:
        raise ValueError("every layer needs rank >= 1")
    common = Counter(ranks.values()).most_common(1)[0][0]
    pattern = {name: rank for name, rank in sorted(ranks.items()) if rank != common}
    config = {
        "r": common,
        "lora_alpha": float(common),
        "rank_pattern": pattern,
        "alpha_pattern": {name: float(rank) for name, rank in pattern.items()},
        "target_modules": sorted(factors),
    }
    tensors = {}
    for name, (up, down) in sorted(factors.items()):
        tensors[f"{UNET_PREFIX}{name}.lora.down.weight"] = down.detach().to(torch.float32).cpu().contiguous()
        tensors[f"{UNET_PREFIX}{name}.lora.up.weight"] = up.detach().to(torch.float32).cpu().contiguous()
    metadata = {
        "format": "pt",
        METADATA_KEY: json.dumps({f"{UNET_PREFIX}{k}": v for k, v in config.items()}, indent=2),
    }
    return save_safetensors_bytes(tensors, metadata=metadata)


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return dict(header.get("__metadata__") or {})


def _adapter_config(header_metadata: Mapping[str, str], source: str) -> dict[str, Any]:
    """The UNet part of the adapter metadata, without the ``unet.`` prefix (empty if absent)."""
    raw = header_metadata.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise LoraFormatError(f"{source}: {METADATA_KEY} is not JSON ({exc})") from None
    return {k[len(UNET_PREFIX) :]: v for k, v in parsed.items() if k.startswith(UNET_PREFIX)}


def _pattern_value(pattern: Mapping[str, Any], module: str) -> Any | None:
    """peft's rule (``get_pattern_key``): the first pattern key matching the module path's tail."""
    for key, value in pattern.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return None


def _scale(module: str, rank: int, config: Mapping[str, Any], alphas: Mapping[str, float]) -> float:
    """α/r as peft computes it for ``module``; 1.0 when the file carries no alpha at all
    (the diffusers convention for alpha-less files)."""
    if module in alphas:
        return alphas[module] / rank
    if "lora_alpha" not in config:
        return 1.0
    alpha = _pattern_value(config.get("alpha_pattern") or {}, module)
    alpha = float(config["lora_alpha"] if alpha is None else alpha)
    r = _pattern_value(config.get("rank_pattern") or {}, module)
    r = int(config.get("r", rank) if r is None else r)
    if r != rank:
        raise LoraFormatError(f"{module}: metadata rank {r} but the weights have rank {rank}")
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
