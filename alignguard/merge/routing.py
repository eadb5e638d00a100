"""Token-wise Co-Merge statistics: second moments of each LoRA'd layer's tokens under routing.

The calibration set, its noised inputs and the hooks' plumbing are :mod:`alignguard.merge.calibration`'s;
where element-wise Co-Merge needs only mean absolute values, token-wise Co-Merge
(:func:`collect_routed_stats`) needs second moments: two passes in which every expert's update is
computed on the same tokens. Pass 1 (base UNet, nothing added)
records each expert's peak activation max_x ‖ΔW_i x‖ per layer; pass 2 calls expert i *active*
on a token when its activation reaches ``threshold`` × its peak, routes the token (``routing``
``winner``: to the most active expert only, when it is active; ``active``: to every active
expert, whose outputs add up), adds the routed output (the routed model) and accumulates G = Σ x xᵀ
and C = Σ (y(x)) xᵀ per layer, y(x) being the routed output, from which
:func:`alignguard.merge.comerge.routed_least_squares` solves the merged ΔW.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import get_args

import torch
from diffusers import DDPMScheduler

from alignguard.config.schema import CoMergeRouting
from alignguard.merge.calibration import (
    CalibrationData,
    NoisedInputs,
    check_layer,
    layer_shapes,
    noise_inputs,
    run_batches,
)
from alignguard.merge.lora_file import LoraFile

ROUTINGS: tuple[str, ...] = get_args(CoMergeRouting)


@dataclass
class RoutedLayer:
    """Second moments of one layer's tokens in the routed pass (float64).

    ``gram [in, in]`` = Σ x xᵀ over all tokens, ``cross [out, in]`` = Σ y(x) xᵀ over routed
    tokens (y: the routed output), ``routed [n]`` tokens routed to each expert (a token routed to
    two active experts counts for both), ``unrouted`` tokens routed to none, ``tokens`` all."""

    gram: torch.Tensor
    cross: torch.Tensor
    routed: torch.Tensor
    unrouted: int = 0
    tokens: int = 0

    @property
    def routed_share(self) -> list[float]:
        """Each expert's share of the (token, expert) routes (all zeros when none was routed)."""
        total = float(self.routed.sum())
        return [float(c) / total if total else 0.0 for c in self.routed]

    @property
    def unrouted_fraction(self) -> float:
        """Share of the tokens left to the base model."""
        return self.unrouted / max(self.tokens, 1)


@dataclass(frozen=True)
class RoutedStats:
    """Token-wise Co-Merge statistics: per layer, each expert's peak activation ``[n]`` and the
    routed pass's :class:`RoutedLayer`."""

    experts: list[str]
    threshold: float
    peaks: dict[str, torch.Tensor]
    layers: dict[str, RoutedLayer]
    routing: str = "winner"

    def tensors(self) -> dict[str, torch.Tensor]:
        flat = {f"peak/{k}": v for k, v in self.peaks.items()}
        for name, layer in self.layers.items():
            flat[f"gram/{name}"] = layer.gram
            flat[f"cross/{name}"] = layer.cross
            flat[f"routed/{name}"] = layer.routed
        return flat


def _stacked_factors(experts: Sequence[LoraFile], name: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``downs [n, r, in]`` and scaled ``ups [n, out, r]`` (zero-padded to the largest rank;
    zeros for an expert without the layer) so all experts' outputs are two batched matmuls."""
    layers = [expert.layers.get(name) for expert in experts]
    present = [layer for layer in layers if layer is not None]
    out, inp = present[0].shape
    rank = max(layer.rank for layer in present)
    downs = torch.zeros(len(layers), rank, inp, device=device)
    ups = torch.zeros(len(layers), out, rank, device=device)
    for i, layer in enumerate(layers):
        if layer is not None:
            downs[i, : layer.rank] = layer.down.to(device, torch.float32)
            ups[i, :, : layer.rank] = layer.up.to(device, torch.float32) * layer.scale
    return downs, ups


def _expert_outputs(x: torch.Tensor, downs: torch.Tensor, ups: torch.Tensor) -> torch.Tensor:
    """ΔW_i x for every expert: ``[n, tokens, out]`` from ``x [tokens, in]``."""
    return torch.matmul(torch.matmul(x.unsqueeze(0), downs.transpose(1, 2)), ups.transpose(1, 2))


def _peak_hook(downs, ups, peak: torch.Tensor) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0].detach().to(torch.float32).reshape(-1, downs.shape[2])
        torch.maximum(peak, _expert_outputs(x, downs, ups).norm(dim=-1).amax(dim=1), out=peak)

    return hook


def route_tokens(activation: torch.Tensor, floor: torch.Tensor, routing: str) -> torch.Tensor:
    """Routing mask ``[n, T]`` (float 0/1) from activations ‖ΔW_i x‖ ``[n, T]`` and each expert's
    floor (τ × its peak) ``[n]``: ``active`` keeps every expert at or above its floor, ``winner``
    only the most active expert (ties to the lowest index), and only when it is at its floor."""
    active = activation >= floor[:, None]
    if routing == "active":
        return active.to(activation.dtype)
    if routing != "winner":
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    winner = activation.argmax(dim=0)
    one_hot = torch.nn.functional.one_hot(winner, activation.shape[0]).T.bool()
    return (one_hot & active).to(activation.dtype)


def _routed_hook(downs, ups, floor: torch.Tensor, layer: RoutedLayer, routing: str) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].detach().to(torch.float32).reshape(-1, downs.shape[2])
        outputs = _expert_outputs(x, downs, ups)  # [n, T, out]
        mask = route_tokens(outputs.norm(dim=-1), floor, routing)  # [n, T]
        routed = (outputs * mask[:, :, None]).sum(dim=0)  # [T, out]
        x64 = x.double()
        layer.gram += x64.T @ x64
        layer.cross += routed.double().T @ x64
        layer.routed += mask.sum(dim=1).to(layer.routed)
        layer.unrouted += int((mask.sum(dim=0) == 0).sum())
        layer.tokens += x.shape[0]
        return output + routed.reshape(output.shape).to(output.dtype)

    return hook


def _run_with_hooks(
    unet: torch.nn.Module,
    hooks: Mapping[str, Callable],
    data: CalibrationData,
    inputs: NoisedInputs,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> None:
    handles = [unet.get_submodule(name).register_forward_hook(hook) for name, hook in hooks.items()]
    try:
        run_batches(unet, data, inputs, batch_size, on_batch)
    finally:
        for handle in handles:
            handle.remove()


def collect_routed_stats(
    unet: torch.nn.Module,
    experts: Mapping[str, LoraFile],
    data: CalibrationData,
    timesteps_per_sample: int,
    seed: int,
    threshold: float,
    batch_size: int = 32,
    scheduler_config: Mapping | None = None,
    on_batch: Callable[[int], None] | None = None,
    routing: str = "winner",
) -> RoutedStats:
    """Token-wise Co-Merge statistics in two passes over the same noised inputs (see the module
    docstring); ``on_batch`` is called per batch of both passes."""
    if len(data) == 0:
        raise ValueError("the calibration set is empty")
    if not 0 <= threshold < 1:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    scheduler = DDPMScheduler.from_config(dict(scheduler_config)) if scheduler_config else DDPMScheduler()
    inputs = noise_inputs(data, timesteps_per_sample, seed, scheduler)
    files = list(experts.values())
    shapes = layer_shapes(files)
    device = unet.device
    factors = {}
    for name in sorted(shapes):
        check_layer(unet, name, next(f.layers[name] for f in files if name in f.layers))
        factors[name] = _stacked_factors(files, name, device)
    peaks = {name: torch.zeros(len(files), device=device) for name in factors}
    hooks = {name: _peak_hook(*factors[name], peaks[name]) for name in factors}
    _run_with_hooks(unet, hooks, data, inputs, batch_size, on_batch)
    layers = {
        name: RoutedLayer(
            gram=torch.zeros(shapes[name][1], shapes[name][1], dtype=torch.float64, device=device),
            cross=torch.zeros(shapes[name], dtype=torch.float64, device=device),
            routed=torch.zeros(len(files), dtype=torch.long, device=device),
        )
        for name in factors
    }
    # An expert with a zero peak (no update on this layer) must never win: its floor is +inf.
    floors = {
        name: torch.where(peak > 0, peak * threshold, torch.full_like(peak, float("inf")))
        for name, peak in peaks.items()
    }
    hooks = {name: _routed_hook(*factors[name], floors[name], layers[name], routing) for name in factors}
    _run_with_hooks(unet, hooks, data, inputs, batch_size, on_batch)
    for layer in layers.values():
        layer.gram, layer.cross, layer.routed = layer.gram.cpu(), layer.cross.cpu(), layer.routed.cpu()
    return RoutedStats(list(experts), threshold, {k: v.cpu() for k, v in peaks.items()}, layers, routing)
