"""One training step's loss: noise both images of each pair alike, score policy and reference."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from alignguard.training.batches import PreferenceBatch
from alignguard.training.losses import LossOutput, diffusion_dpo_loss, per_example_mse, sft_loss


@contextmanager
def adapters_disabled(unet: UNet2DConditionModel):
    """The reference model: the same UNet with its LoRA switched off (no second UNet in memory)."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def _predict(
    unet, noisy: torch.Tensor, timesteps: torch.Tensor, text: torch.Tensor, pooled, time_ids
) -> torch.Tensor:
    added = None if pooled is None else {"text_embeds": pooled, "time_ids": time_ids}
    return unet(noisy, timesteps, encoder_hidden_states=text, added_cond_kwargs=added).sample


def _pair_inputs(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Conditioning for the stacked ``[w; l]`` latents: the batch's captions, twice."""
    pooled = None if batch.pooled is None else torch.cat([batch.pooled, batch.pooled])
    time_ids = None if batch.time_ids is None else torch.cat([batch.time_ids, batch.time_ids])
    return torch.cat([batch.text, batch.text]), pooled, time_ids


def preference_loss(
    unet: UNet2DConditionModel,
    noise_scheduler: DDPMScheduler,
    batch: PreferenceBatch,
    generator: torch.Generator,
    loss: str = "dpo",
    beta: float = 5000.0,
    anchor_weight: float = 0.0,
    reference: UNet2DConditionModel | None = None,
    preserve_weight: float = 0.0,
    timestep_range: tuple[int, int] | None = None,
) -> LossOutput:
    """The loss of one micro-batch.

    w and l share timesteps ``t ~ U[0, T)`` and noise ``ε`` (drawn from ``generator`` on the CPU,
    so a step is reproducible on any device). The target is ε, or the velocity for v-prediction
    models (SD2.1). ``reference``: a separate frozen UNet (full fine-tuning); by default the
    policy with its adapter disabled. ``preserve_weight``: distil the policy's predictions to the
    reference's when conditioned on each pair's safe prompt, where nothing should change.
    ``timestep_range``: draw ``t`` from ``[low, high)`` instead of the whole schedule.
    """
    size = batch.latents_w.shape[0]
    latents = torch.cat([batch.latents_w, batch.latents_l])
    low, high = timestep_range or (0, noise_scheduler.config.num_train_timesteps)
    timesteps = torch.randint(low, high, (size,), generator=generator)
    noise = torch.randn(batch.latents_w.shape, generator=generator, dtype=torch.float32)
    timesteps = torch.cat([timesteps, timesteps]).to(latents.device)
    noise = torch.cat([noise, noise]).to(latents.device, latents.dtype)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    conditioning = _pair_inputs(batch)
    prediction = _predict(unet, noisy, timesteps, *conditioning)
    policy = per_example_mse(prediction, target)
    if loss == "sft":
        return sft_loss(policy[:size])
    with torch.no_grad():
        ref_prediction = _reference_predict(unet, reference, noisy, timesteps, conditioning)
    ref = per_example_mse(ref_prediction, target)
    out = diffusion_dpo_loss(policy[:size], policy[size:], ref[:size], ref[size:], beta, anchor_weight)
    if not preserve_weight or batch.preserve_latents is None:
        return out
    drift = _preservation_drift(unet, reference, noise_scheduler, batch, generator)
    total = out.loss + preserve_weight * drift
    return LossOutput(
        total, {**out.metrics, "preserve": float(drift.detach()), "loss": float(total.detach())}
    )


def _reference_predict(unet, reference, noisy, timesteps, conditioning) -> torch.Tensor:
    if reference is not None:
        return _predict(reference, noisy, timesteps, *conditioning)
    with adapters_disabled(unet):
        return _predict(unet, noisy, timesteps, *conditioning)


def _preservation_drift(unet, reference, noise_scheduler, batch: PreferenceBatch, generator) -> torch.Tensor:
    """Mean squared gap between policy and reference predictions on the preservation inputs
    (safe images under their safe prompts, or the empty prompt), at fresh timesteps over the
    WHOLE schedule: those outputs should not move at all, and the high-noise steps, where a
    sample's layout is decided, least of all."""
    latents = batch.preserve_latents
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    )
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(
        latents.device, latents.dtype
    )
    timesteps = timesteps.to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    conditioning = (batch.preserve_text, batch.preserve_pooled, batch.time_ids)
    policy = _predict(unet, noisy, timesteps, *conditioning)
    with torch.no_grad():
        ref = _reference_predict(unet, reference, noisy, timesteps, conditioning)
    return per_example_mse(policy, ref).mean()
