"""Calibration-set providers: functions ``(config, pipe, run_dir) -> CalibrationData``.

Providers are chosen by ``merge.calibration.source``:

- ``toyworld``: prompts of every configured category (unsafe prompts and their safe twins, from
  :func:`alignguard.toyworld.prompts.category_pairs`), each with its **ground-truth** scene
  (rendered by :func:`alignguard.toyworld.world.render` at a seeded layout), VAE-encoded
  (posterior mean × scaling factor) and text-encoded with the pipeline's own encoder. Needs no
  synthesis output.
- ``synthesis``: the synthesis stage's training cache — the model's own renders of
  ``prompts_per_category`` seeded pairs of every category (VAE latents of both images, text
  embeddings of both prompts; SDXL's pooled embeddings and time ids), plus up to
  ``benign_prompts`` rows of the empty prompt (classifier-free guidance's unconditional input)
  over safe images. CoProV2 has no benign prompts: the empty prompt stands for them.
- ``auto``: the model family's own source when it has one (``toyworld`` for the toy model:
  ground-truth scenes and benign prompts), else ``synthesis`` when ``<run>/synthesis`` is complete;
  otherwise an error that says what to do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, StableDiffusionXLPipeline

from alignguard.config.schema import ExperimentConfig
from alignguard.families import get_family
from alignguard.io import RunDir, stage_status
from alignguard.merge.calibration import CalibrationData

Provider = Callable[[ExperimentConfig, DiffusionPipeline, RunDir], CalibrationData]
_PROVIDERS: dict[str, Provider] = {}


class CalibrationUnavailable(ValueError):
    """No calibration set can be built for this run; the message says why and what to do."""


def register_provider(name: str, provider: Provider) -> None:
    _PROVIDERS[name] = provider


def select_provider(config: ExperimentConfig, run: RunDir) -> tuple[str, Provider]:
    """The provider ``merge.calibration.source`` names (resolving ``auto``)."""
    source = config.merge.calibration.source
    if source == "auto":
        if family_source := get_family(config.model.family).calibration_source:
            source = family_source
        elif stage_status(run.sub("synthesis"), verify_hashes=False).complete:
            source = "synthesis"
        else:
            raise CalibrationUnavailable(
                "merge.calibration.source=auto: no calibration set for model.family="
                f"{config.model.family!r} (needs a complete synthesis stage: run `alignguard synthesize` "
                "first), or use a merge strategy without calibration"
            )
    if source == "synthesis" and not stage_status(run.sub("synthesis"), verify_hashes=False).complete:
        raise CalibrationUnavailable(
            f"merge.calibration.source='synthesis': {run.sub('synthesis').uri} is not a complete "
            "synthesis stage; run `alignguard synthesize` first"
        )
    if source not in _PROVIDERS:
        raise CalibrationUnavailable(
            f"merge.calibration.source={source!r}: no provider is available (available: {sorted(_PROVIDERS)})"
        )
    return source, _PROVIDERS[source]


@torch.no_grad()
def encode_text(
    pipe: DiffusionPipeline, prompts: Sequence[str], resolution: int, batch_size: int = 64
) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """Conditional text embeddings ``[N, L, D]`` (and SDXL's pooled embeddings + time ids)."""
    device = pipe.text_encoder.device if pipe.text_encoder is not None else torch.device("cpu")
    embeds, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        out = pipe.encode_prompt(
            chunk, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
        embeds.append(out[0].float().cpu())
        if isinstance(pipe, StableDiffusionXLPipeline):
            pooled.append(out[2].float().cpu())
    if not pooled:
        return torch.cat(embeds), None
    # SDXL's micro-conditioning: original size, crop top-left, target size (no crop here).
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32)
    return torch.cat(embeds), {"text_embeds": torch.cat(pooled), "time_ids": time_ids.repeat(len(prompts), 1)}


@torch.no_grad()
def encode_images(pipe: DiffusionPipeline, images: np.ndarray, batch_size: int = 64) -> torch.Tensor:
    """VAE posterior means × scaling factor ``[N, 4, h, w]`` of ``images [N, H, W, 3]`` in [0, 1]."""
    vae = pipe.vae
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    latents = []
    for start in range(0, len(images), batch_size):
        pixels = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        pixels = (pixels.permute(0, 3, 1, 2) * 2 - 1).to(vae.device, vae.dtype)
        mean = vae.encode(pixels).latent_dist.mean
        latents.append(((mean - shift) * vae.config.scaling_factor).float().cpu())
    return torch.cat(latents)


def toyworld_scenes(prompts: Sequence[str], seed: int) -> np.ndarray:
    """The ground-truth image ``[N, 32, 32, 3]`` of each toy prompt, at a seeded layout; the
    empty prompt (classifier-free guidance's unconditional input) gets the bare background."""
    from alignguard.toyworld.world import (
        BACKGROUND_RGB,
        COLOURS_BY_NAME,
        expected_content,
        render,
        sample_layout,
    )

    rng = np.random.default_rng(seed)
    images = []
    for prompt in prompts:
        if not prompt.strip():
            images.append(np.broadcast_to(np.asarray(BACKGROUND_RGB, np.float32), (32, 32, 3)).copy())
            continue
        shape, colour = expected_content(prompt)
        if shape is None or colour is None:
            raise ValueError(f"not a toy-world prompt (no shape or colour): {prompt!r}")
        images.append(render(shape, COLOURS_BY_NAME[colour], sample_layout(rng)))
    return np.stack(images)


def toyworld_prompts(categories: Sequence[str], per_category: int, seed: int, benign: int = 0) -> list[str]:
    """Unsafe prompts and their safe twins, ``per_category`` pairs of every category; with
    ``benign`` > 0 also that many benign prompts and the empty prompt — where the merged LoRA
    should act like none of the experts' harm-specific updates."""
    from alignguard.toyworld.prompts import benign_prompts, category_pairs

    prompts = []
    for category in categories:
        for pair in category_pairs(category, per_category, seed):  # type: ignore[arg-type]
            prompts += [pair.unsafe_prompt, pair.safe_prompt]
    if benign:
        prompts += [*benign_prompts(benign, seed), ""]
    return prompts


def toyworld_provider(config: ExperimentConfig, pipe: DiffusionPipeline, run: RunDir) -> CalibrationData:
    calibration = config.merge.calibration
    prompts = toyworld_prompts(
        config.data.categories, calibration.prompts_per_category, calibration.seed, calibration.benign_prompts
    )
    latents = encode_images(pipe, toyworld_scenes(prompts, calibration.seed))
    embeds, added = encode_text(pipe, prompts, config.model.resolution)
    return CalibrationData(
        latents=latents, encoder_hidden_states=embeds, added_cond_kwargs=added, prompts=prompts
    )


register_provider("toyworld", toyworld_provider)


def synthesis_provider(config: ExperimentConfig, pipe: DiffusionPipeline, run: RunDir) -> CalibrationData:
    from alignguard.synthesis.store import load_pair_cache

    calibration = config.merge.calibration
    stage = run.sub("synthesis")
    if not stage_status(stage, verify_hashes=False).complete:
        raise CalibrationUnavailable(
            f"merge.calibration.source='synthesis': {stage.uri} is not a complete synthesis stage; "
            "run `alignguard synthesize` first"
        )
    try:
        cache = load_pair_cache(stage)
    except FileNotFoundError as exc:
        raise CalibrationUnavailable(f"merge.calibration.source='synthesis': {exc}") from None
    rng = np.random.default_rng(calibration.seed)
    rows: list[int] = []
    for category in config.data.categories:
        members = [i for i, labels in enumerate(cache.categories) if category in labels]
        if not members:
            raise CalibrationUnavailable(f"the synthesis cache of {stage.uri} has no pair of {category!r}")
        count = min(calibration.prompts_per_category, len(members))
        rows += sorted(int(i) for i in rng.choice(members, size=count, replace=False))
    index = np.asarray(rows, dtype=np.int64)
    empty_rows = index[: min(calibration.benign_prompts, len(index))]
    t = cache.tensors

    def stacked(unsafe: np.ndarray, safe: np.ndarray, empty: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([unsafe[index], safe[index], empty]))

    latents = stacked(t["latents_unsafe"], t["latents_safe"], t["latents_safe"][empty_rows])
    empty_text = np.repeat(cache.empty["text"], len(empty_rows), axis=0)
    text = stacked(t["text_unsafe"], t["text_safe"], empty_text)
    added = None
    if "pooled_unsafe" in t:  # SDXL
        empty_pooled = np.repeat(cache.empty["pooled"], len(empty_rows), axis=0)
        added = {
            "text_embeds": stacked(t["pooled_unsafe"], t["pooled_safe"], empty_pooled),
            "time_ids": stacked(t["time_ids"], t["time_ids"], t["time_ids"][empty_rows]),
        }
    ids = [cache.pair_ids[i] for i in rows]
    prompts = [f"{i}:unsafe" for i in ids] + [f"{i}:safe" for i in ids] + [""] * len(empty_rows)
    return CalibrationData(
        latents=latents, encoder_hidden_states=text, added_cond_kwargs=added, prompts=prompts
    )


register_provider("synthesis", synthesis_provider)
