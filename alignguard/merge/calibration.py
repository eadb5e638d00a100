"""Calibration for Co-Merge: what each LoRA'd layer sees while each expert drives the UNet.

Inputs are a plain :class:`CalibrationData` (clean latents already × the VAE scaling factor,
text embeddings, SDXL's added conditioning), built by a provider (see
:mod:`alignguard.merge.providers`). Timesteps and noise are drawn once from a seeded generator
(uniform t over the training schedule, ε ~ N(0, I), x_t by the DDPM forward process), so every
expert sees exactly the same noised inputs.

For expert i, the *base* UNet runs with forward hooks on the LoRA'd linear layers that add
s_i·B_i·A_i·x to each output (exactly what peft's unmerged LoRA computes) and record, per
layer, Σ|x_j| over tokens (element-wise Co-Merge needs only mean|x_j|, since
mean|ΔW[o, j]·x_j| = |ΔW[o, j]|·mean|x_j|) and Σ|(ΔW_i x)_o| (the row-wise score). Only the
conditional branch is run: the prompts carry what the experts were trained to change (the
calibration set includes the empty prompt, which is what the unconditional branch sees).

Token-wise Co-Merge (:func:`collect_routed_stats`) needs second moments instead: two passes in
which every expert's update is computed on the same tokens. Pass 1 (base UNet, nothing added)
records each expert's peak activation max_x ‖ΔW_i x‖ per layer; pass 2 calls expert i *active*
on a token when its activation reaches ``threshold`` × its peak, routes the token (``routing``
``winner``: to the most active expert only, when it is active; ``active``: to every active
expert, whose outputs add up), adds the routed output (the routed model) and accumulates G = Σ x xᵀ
and C = Σ (y(x)) xᵀ per layer, y(x) being the routed output, from which
:func:`alignguard.merge.comerge.routed_least_squares` solves the merged ΔW.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import get_args

import torch
from diffusers import DDPMScheduler

from alignguard.config.schema import CoMergeRouting
from alignguard.merge.lora_file import LoraFile, LoraLayer

ROUTINGS: tuple[str, ...] = get_args(CoMergeRouting)


class LayerMismatchError(ValueError):
    """An expert's layer does not exist in the UNet, or has another shape (an expert of another model)."""


@dataclass(frozen=True)
class CalibrationData:
    """Clean inputs of the calibration set.

    ``latents [N, 4, h, w]`` (× scaling factor), ``encoder_hidden_states [N, L, D]``, and for
    SDXL ``added_cond_kwargs`` (``text_embeds [N, D']``, ``time_ids [N, 6]``)."""

    latents: torch.Tensor
    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None
    prompts: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.latents.shape[0]
        if self.encoder_hidden_states.shape[0] != n:
            raise ValueError(f"{n} latents but {self.encoder_hidden_states.shape[0]} text embeddings")
        for key, value in (self.added_cond_kwargs or {}).items():
            if value.shape[0] != n:
                raise ValueError(f"{n} latents but {value.shape[0]} rows of added_cond_kwargs[{key!r}]")

    def __len__(self) -> int:
        return int(self.latents.shape[0])


@dataclass(frozen=True)
class NoisedInputs:
    """The UNet inputs of one calibration pass: sample i is ``(noisy[i], t[i], source[i])``."""

    noisy: torch.Tensor  # [N·K, 4, h, w]
    timesteps: torch.Tensor  # [N·K] long
    source: torch.Tensor  # [N·K] index into the CalibrationData rows


@dataclass
class LayerStats:
    """Running sums of one layer under one expert (float64)."""

    input_abs_sum: torch.Tensor  # [in]
    output_abs_sum: torch.Tensor  # [out]
    tokens: int = 0


@dataclass(frozen=True)
class ActivationStats:
    """Per layer: ``input_abs_mean [n_experts, in]`` (mean |x_j|) and ``output_abs_mean
    [n_experts, out]`` (mean |(ΔW_i x)_o|) with expert i active; tokens counted per expert."""

    experts: list[str]
    input_abs_mean: dict[str, torch.Tensor]
    output_abs_mean: dict[str, torch.Tensor]
    tokens: dict[str, int]

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat name → tensor map (for a safetensors file next to the merge report)."""
        flat = {f"input_abs_mean/{k}": v for k, v in self.input_abs_mean.items()}
        flat.update({f"output_abs_mean/{k}": v for k, v in self.output_abs_mean.items()})
        return flat


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


def noise_inputs(data: CalibrationData, timesteps_per_sample: int, seed: int, scheduler) -> NoisedInputs:
    """Each clean latent noised at ``timesteps_per_sample`` uniform timesteps (seeded, on CPU)."""
    generator = torch.Generator().manual_seed(seed)
    latents = data.latents.detach().cpu().float().repeat_interleave(timesteps_per_sample, dim=0)
    count = latents.shape[0]
    steps = torch.randint(0, scheduler.config.num_train_timesteps, (count,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    noisy = scheduler.add_noise(latents, noise, steps)
    source = torch.arange(len(data)).repeat_interleave(timesteps_per_sample)
    return NoisedInputs(noisy=noisy, timesteps=steps, source=source)


def _lora_hook(layer: LoraLayer, stats: LayerStats, device: torch.device) -> Callable:
    up = (layer.up.to(device=device, dtype=torch.float32) * layer.scale).contiguous()
    down = layer.down.to(device=device, dtype=torch.float32).contiguous()

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        x = args[0].detach().to(torch.float32).reshape(-1, down.shape[1])
        lora_out = (x @ down.T) @ up.T  # [tokens, out]
        stats.input_abs_sum += x.abs().sum(dim=0, dtype=torch.float64)
        stats.output_abs_sum += lora_out.abs().sum(dim=0, dtype=torch.float64)
        stats.tokens += x.shape[0]
        return output + lora_out.reshape(output.shape).to(output.dtype)

    return hook


def _check_layer(unet: torch.nn.Module, name: str, layer: LoraLayer) -> torch.nn.Linear:
    try:
        module = unet.get_submodule(name)
    except AttributeError:
        raise LayerMismatchError(
            f"LoRA layer {name} does not exist in this UNet (an expert of another model?)"
        ) from None
    if not isinstance(module, torch.nn.Linear):
        raise LayerMismatchError(f"LoRA layer {name} is a {type(module).__name__}, not a Linear layer")
    if (module.out_features, module.in_features) != layer.shape:
        raise LayerMismatchError(
            f"LoRA layer {name} has shape {layer.shape} but the UNet layer is "
            f"{(module.out_features, module.in_features)}"
        )
    return module


@contextlib.contextmanager
def expert_hooks(unet: torch.nn.Module, expert: LoraFile) -> Iterator[dict[str, LayerStats]]:
    """Within the block, ``unet`` computes W·x + b + s·B·A·x on every layer of ``expert`` (what
    peft's unmerged LoRA computes) and accumulates per-layer statistics into the yielded dict."""
    device = unet.device
    stats, handles = {}, []
    try:
        for name, layer in expert.layers.items():
            module = _check_layer(unet, name, layer)
            stats[name] = LayerStats(
                torch.zeros(layer.shape[1], dtype=torch.float64, device=device),
                torch.zeros(layer.shape[0], dtype=torch.float64, device=device),
            )
            handles.append(module.register_forward_hook(_lora_hook(layer, stats[name], device)))
        yield stats
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def _run_batches(
    unet: torch.nn.Module,
    data: CalibrationData,
    inputs: NoisedInputs,
    batch_size: int,
    on_batch: Callable[[int], None] | None,
) -> None:
    """The UNet over every noised input, in batches (hooks do the recording)."""
    device, dtype = unet.device, unet.dtype
    for start in range(0, len(inputs.timesteps), batch_size):
        rows = inputs.source[start : start + batch_size]
        added = {k: v[rows].to(device, dtype) for k, v in (data.added_cond_kwargs or {}).items()}
        unet(
            inputs.noisy[start : start + batch_size].to(device, dtype),
            inputs.timesteps[start : start + batch_size].to(device),
            encoder_hidden_states=data.encoder_hidden_states[rows].to(device, dtype),
            added_cond_kwargs=added or None,
        )
        if on_batch is not None:
            on_batch(len(rows))


def expert_pass(
    unet: torch.nn.Module,
    expert: LoraFile,
    data: CalibrationData,
    inputs: NoisedInputs,
    batch_size: int,
    on_batch: Callable[[int], None] | None = None,
) -> dict[str, LayerStats]:
    """Run the base UNet with ``expert`` applied by hooks over all ``inputs``; per-layer sums."""
    with expert_hooks(unet, expert) as stats:
        _run_batches(unet, data, inputs, batch_size, on_batch)
    return stats


def collect_activation_stats(
    unet: torch.nn.Module,
    experts: Mapping[str, LoraFile],
    data: CalibrationData,
    timesteps_per_sample: int,
    seed: int,
    batch_size: int = 32,
    scheduler_config: Mapping | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> ActivationStats:
    """Mean |x_j| and mean |(ΔW_i x)_o| per layer, for each expert in turn (same noised inputs).

    ``scheduler_config``: the pipeline's scheduler config (its β schedule defines x_t); SD's
    defaults when None. Layers an expert lacks get zeros for that expert."""
    if len(data) == 0:
        raise ValueError("the calibration set is empty")
    scheduler = DDPMScheduler.from_config(dict(scheduler_config)) if scheduler_config else DDPMScheduler()
    inputs = noise_inputs(data, timesteps_per_sample, seed, scheduler)
    names = sorted({name for expert in experts.values() for name in expert.layers})
    shapes = _layer_shapes(experts.values())
    input_means = {name: torch.zeros(len(experts), shapes[name][1]) for name in names}
    output_means = {name: torch.zeros(len(experts), shapes[name][0]) for name in names}
    tokens = {}
    for i, (expert_name, expert) in enumerate(experts.items()):
        stats = expert_pass(unet, expert, data, inputs, batch_size, on_batch)
        for name, layer_stats in stats.items():
            count = max(layer_stats.tokens, 1)
            input_means[name][i] = (layer_stats.input_abs_sum / count).float().cpu()
            output_means[name][i] = (layer_stats.output_abs_sum / count).float().cpu()
        tokens[expert_name] = sum(s.tokens for s in stats.values())
    return ActivationStats(list(experts), input_means, output_means, tokens)


def _layer_shapes(experts: Iterable[LoraFile]) -> dict[str, tuple[int, int]]:
    shapes: dict[str, tuple[int, int]] = {}
    for expert in experts:
        for name, layer in expert.layers.items():
            if shapes.setdefault(name, layer.shape) != layer.shape:
                raise ValueError(f"experts disagree on the shape of {name}: {shapes[name]} vs {layer.shape}")
    return shapes


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
        _run_batches(unet, data, inputs, batch_size, on_batch)
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
    shapes = _layer_shapes(files)
    device = unet.device
    factors = {}
    for name in sorted(shapes):
        _check_layer(unet, name, next(f.layers[name] for f in files if name in f.layers))
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
