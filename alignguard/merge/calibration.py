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
(Token-wise Co-Merge's second moments: :mod:`alignguard.merge.routing`.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from diffusers import DDPMScheduler

from alignguard.merge.lora_file import LoraFile, LoraLayer


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


def check_layer(unet: torch.nn.Module, name: str, layer: LoraLayer) -> torch.nn.Linear:
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
            module = check_layer(unet, name, layer)
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
def run_batches(
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
        run_batches(unet, data, inputs, batch_size, on_batch)
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
    shapes = layer_shapes(experts.values())
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


def layer_shapes(experts: Iterable[LoraFile]) -> dict[str, tuple[int, int]]:
    shapes: dict[str, tuple[int, int]] = {}
    for expert in experts:
        for name, layer in expert.layers.items():
            if shapes.setdefault(name, layer.shape) != layer.shape:
                raise ValueError(f"experts disagree on the shape of {name}: {shapes[name]} vs {layer.shape}")
    return shapes
