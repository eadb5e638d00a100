"""Refining a merged LoRA by distilling every expert into it, end to end (``merge.refine``).

Co-Merge fits each layer's merged ΔW to the experts' *per-layer* outputs on calibration tokens.
Where experts act on the same tokens (the template words every prompt shares, and in a causal
text encoder the tokens after the concept word) no single matrix reproduces all of them, and the
fit averages their targets; on the toy world that loses part of an expert (self-harm's, whose
change is small) or repaints safe images (see BENCHMARKS.md, "Searching for a margin").

Refinement keeps the merged LoRA's layers and rank and trains its factors (``up``, ``down``;
ΔW = up · down) on the whole UNet's *output*, the quantity the experts were trained on:

    L = E_c E_{x, t, ε} ‖ε̂_merged(x_t, p_unsafe) − ε̂_expert_c(x_t, p_unsafe)‖²      (each category c)
      + λ · E_{x, t, ε} ‖ε̂_merged(x_t, p) − ε̂_base(x_t, p)‖²         (p: safe twins, the empty prompt)

with x the model's own renders of c's pairs (the synthesis cache: both images, so the noised
inputs cover the trajectories of the unsafe prompt before and after alignment), t uniform over
the schedule, and λ = ``preserve_weight``. Every step distils every category at once
(``ceil(batch_size / C)`` inputs each: one expert pass per category, one base pass, one student
pass over the concatenation): taking the categories in turns instead left self-harm's IP at 0.27
where mixed batches gave 0.13–0.17. It starts from Co-Merge's solution: from zero, the same budget
leaves self-harm's effect half learnt (BENCHMARKS.md).

The LoRA is applied by forward hooks that add ``x · downᵀ · upᵀ`` to each target Linear (the
low-rank path: no dense ΔW), so teachers (the experts' files) and the student share one frozen
UNet. ``retention`` (reported before and after) is, per category on a fixed probe set,
``1 − ‖ε̂_merged − ε̂_expert‖² / ‖ε̂_base − ε̂_expert‖²``: 1 when the merged LoRA reproduces the
expert, 0 when it does no better than the base model; ``drift`` is the preservation MSE
relative to the experts' mean effect (0: the base model's predictions are kept).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch

from alignguard.merge.lora_file import LoraFile

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # module -> (up [out, k], down [k, in])


@dataclass(frozen=True)
class RefineOptions:
    steps: int
    learning_rate: float
    batch_size: int
    preserve_weight: float
    probe_size: int
    seed: int


@dataclass(frozen=True)
class RefineData:
    """Per category: noised-input sources. ``latents [N, C, h, w]`` (both images of each pair),
    ``text [N, L, D]`` (the unsafe prompt, twice); the preservation set: safe images with their
    safe prompts, and the same images with the empty prompt. ``added``: SDXL's ``text_embeds``
    and ``time_ids`` rows aligned with each set, or empty."""

    categories: dict[str, tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]]
    preserve: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]


def refine_data(cache, categories: list[str]) -> RefineData:
    """Build :class:`RefineData` from a synthesis :class:`~alignguard.synthesis.store.PairCache`."""
    tensors, sdxl = cache.tensors, "pooled_unsafe" in cache.tensors

    def rows(index: np.ndarray, latent_keys: tuple[str, ...], text_key: str | None):
        latents = np.concatenate([tensors[k][index] for k in latent_keys])
        if text_key is None:  # the empty prompt
            text = np.repeat(cache.empty["text"], len(latents), axis=0)
        else:
            text = np.concatenate([tensors[text_key][index]] * len(latent_keys))
        added = {}
        if sdxl:
            pooled = (
                np.repeat(cache.empty["pooled"], len(latents), axis=0)
                if text_key is None
                else np.concatenate([tensors[text_key.replace("text", "pooled")][index]] * len(latent_keys))
            )
            added = {
                "text_embeds": torch.from_numpy(pooled),
                "time_ids": torch.from_numpy(np.concatenate([tensors["time_ids"][index]] * len(latent_keys))),
            }
        return torch.from_numpy(latents), torch.from_numpy(text), added

    per_category = {}
    for category in categories:
        index = np.array(
            [i for i, labels in enumerate(cache.categories) if category in labels], dtype=np.int64
        )
        if len(index) == 0:
            raise ValueError(f"merge.refine: no synthesized pairs of category {category!r} in the cache")
        per_category[category] = rows(index, ("latents_unsafe", "latents_safe"), "text_unsafe")
    everything = np.arange(len(cache), dtype=np.int64)
    safe = rows(everything, ("latents_safe",), "text_safe")
    empty = rows(everything, ("latents_safe",), None)
    preserve = (
        torch.cat([safe[0], empty[0]]),
        torch.cat([safe[1], empty[1]]),
        {k: torch.cat([safe[2][k], empty[2][k]]) for k in safe[2]},
    )
    return RefineData(per_category, preserve)


class LowRankHooks:
    """Adds ``x · downᵀ · upᵀ`` to named Linear layers of a UNet; which factors is switchable.

    ``use(None)`` is the base model; ``use(factors)`` any LoRA given as (up, down) per module
    (module paths without ``unet.``). Layers missing from ``factors`` get nothing."""

    def __init__(self, unet: torch.nn.Module, modules: list[str]) -> None:
        self._active: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self._handles = [unet.get_submodule(name).register_forward_hook(self._hook(name)) for name in modules]

    def _hook(self, name: str) -> Callable:
        def add(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            factors = None if self._active is None else self._active.get(name)
            if factors is None:
                return output
            up, down = factors
            x = args[0]
            return output + (x.to(down.dtype) @ down.T @ up.T).to(output.dtype)

        return add

    def use(self, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        self._active = factors

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@contextmanager
def low_rank_hooks(unet: torch.nn.Module, modules: list[str]) -> Iterator[LowRankHooks]:
    hooks = LowRankHooks(unet, modules)
    try:
        yield hooks
    finally:
        hooks.remove()


def expert_factors(expert: LoraFile, device: torch.device) -> Factors:
    """An expert file's layers as (scale · up, down) in fp32 on ``device``."""
    return {
        name: (
            (layer.up.to(torch.float32) * layer.scale).to(device),
            layer.down.to(device=device, dtype=torch.float32),
        )
        for name, layer in expert.layers.items()
    }


def _draw(source, count: int, generator: torch.Generator, scheduler, device, dtype):
    """``count`` random rows of ``source``, noised at uniform timesteps: UNet inputs."""
    latents, text, added = source
    rows = torch.randint(0, len(latents), (count,), generator=generator)
    clean = latents[rows]
    noise = torch.randn(clean.shape, generator=generator)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (count,), generator=generator)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    kwargs = {k: v[rows].to(device, dtype) for k, v in added.items()}
    return noisy.to(device, dtype), timesteps.to(device), text[rows].to(device, dtype), kwargs or None


def _concat(inputs: list[tuple]) -> tuple:
    """One batch from several ``_draw`` results."""
    noisy, timesteps, text = (torch.cat([i[k] for i in inputs]) for k in range(3))
    added = None if inputs[0][3] is None else {k: torch.cat([i[3][k] for i in inputs]) for k in inputs[0][3]}
    return noisy, timesteps, text, added


def _predict(unet, hooks: LowRankHooks, factors, inputs) -> torch.Tensor:
    noisy, timesteps, text, added = inputs
    hooks.use(factors)
    return unet(noisy, timesteps, encoder_hidden_states=text, added_cond_kwargs=added).sample.float()


def refine_factors(
    unet: torch.nn.Module,
    scheduler,
    data: RefineData,
    experts: Mapping[str, LoraFile],
    factors: Factors,
    options: RefineOptions,
    device: torch.device,
    on_step: Callable[[int], None] | None = None,
) -> tuple[Factors, dict]:
    """Train ``factors`` (the merged LoRA) to reproduce each expert on its own category's unsafe
    prompts and the base model on safe and empty prompts. Returns the new factors (fp32, CPU) and
    a report: options, the loss history (at most ~50 points), and retention/drift before and after."""
    missing = sorted(set(data.categories) - set(experts))
    if missing:
        raise ValueError(f"merge.refine: no expert for categories {missing}")
    unet.requires_grad_(False)
    teachers = {c: expert_factors(experts[c], device) for c in data.categories}
    student = {
        name: (
            torch.nn.Parameter(up.detach().to(device, torch.float32).clone()),
            torch.nn.Parameter(down.detach().to(device, torch.float32).clone()),
        )
        for name, (up, down) in factors.items()
    }
    modules = sorted(set(student) | {n for t in teachers.values() for n in t})
    probes = _probes(data, options, scheduler, device, next(unet.parameters()).dtype)
    optimizer = torch.optim.AdamW([p for pair in student.values() for p in pair], lr=options.learning_rate)
    generator = torch.Generator().manual_seed(options.seed)
    history = []
    was_training = unet.training
    unet.eval()
    try:
        with low_rank_hooks(unet, modules) as hooks:
            before = _measure(unet, hooks, student, teachers, probes)
            step_losses = _StepLosses(unet, scheduler, hooks, data, teachers, options, generator, device)
            for step in range(options.steps):
                distil, keep = step_losses(student)
                optimizer.zero_grad(set_to_none=True)
                (distil + options.preserve_weight * keep).backward()
                optimizer.step()
                history.append({"step": step + 1, "distil": distil.item(), "preserve": keep.item()})
                if on_step is not None:
                    on_step(step + 1)
            after = _measure(unet, hooks, student, teachers, probes)
    finally:
        unet.train(was_training)
    refined = {name: (up.detach().cpu(), down.detach().cpu()) for name, (up, down) in student.items()}
    thinned = history[:: max(1, len(history) // 50)]
    if history and thinned[-1] is not history[-1]:
        thinned.append(history[-1])
    return refined, {"options": asdict(options), "before": before, "after": after, "history": thinned}


class _StepLosses:
    """One step's (distillation, preservation) MSE of a student: fresh noised inputs, every
    category's share distilled from its expert, the preservation batch from the base model."""

    def __init__(self, unet, scheduler, hooks, data: RefineData, teachers, options, generator, device):
        self.unet, self.scheduler, self.hooks, self.data = unet, scheduler, hooks, data
        self.teachers, self.options, self.generator, self.device = teachers, options, generator, device
        self.dtype = next(unet.parameters()).dtype
        self.per_category = -(-options.batch_size // len(data.categories))

    def _draw(self, source, count: int):
        return _draw(source, count, self.generator, self.scheduler, self.device, self.dtype)

    def __call__(self, student) -> tuple[torch.Tensor, torch.Tensor]:
        unet, hooks = self.unet, self.hooks
        inputs, targets = [], []
        with torch.no_grad():
            for category, source in self.data.categories.items():
                inputs.append(self._draw(source, self.per_category))
                targets.append(_predict(unet, hooks, self.teachers[category], inputs[-1]))
            keep_in = self._draw(self.data.preserve, self.options.batch_size)
            keep_target = _predict(unet, hooks, None, keep_in)
        distil_in = _concat(inputs)
        distil = torch.nn.functional.mse_loss(_predict(unet, hooks, student, distil_in), torch.cat(targets))
        keep = torch.nn.functional.mse_loss(_predict(unet, hooks, student, keep_in), keep_target)
        return distil, keep


def _probes(data: RefineData, options: RefineOptions, scheduler, device, dtype) -> dict:
    """A fixed probe set (its own seed) per category and for preservation."""
    generator = torch.Generator().manual_seed(options.seed + 1)
    size = options.probe_size
    probes = {
        c: _draw(source, size, generator, scheduler, device, dtype) for c, source in data.categories.items()
    }
    probes[None] = _draw(data.preserve, size, generator, scheduler, device, dtype)
    return probes


@torch.no_grad()
def _measure(unet, hooks: LowRankHooks, student, teachers, probes: dict) -> dict:
    """Retention per category and preservation drift of ``student`` on the probe set."""
    retention, effects = {}, []
    for category, teacher in teachers.items():
        inputs = probes[category]
        base = _predict(unet, hooks, None, inputs)
        expert = _predict(unet, hooks, teacher, inputs)
        merged = _predict(unet, hooks, student, inputs)
        effect = float(((base - expert) ** 2).mean())
        effects.append(effect)
        retention[category] = 1.0 - float(((merged - expert) ** 2).mean()) / max(effect, 1e-12)
    inputs = probes[None]
    drift = float(
        ((_predict(unet, hooks, student, inputs) - _predict(unet, hooks, None, inputs)) ** 2).mean()
    )
    return {
        "retention": {c: round(v, 4) for c, v in retention.items()},
        "min_retention": round(min(retention.values()), 4),
        "drift": round(drift / max(float(np.mean(effects)), 1e-12), 4),
    }
