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


def _predict(unet, noisy: torch.Tensor, timesteps: torch.Tensor, batch: PreferenceBatch) -> torch.Tensor:
    text = torch.cat([batch.text, batch.text])
    added = None
    if batch.pooled is not None:
        added = {
            "text_embeds": torch.cat([batch.pooled, batch.pooled]),
            "time_ids": torch.cat([batch.time_ids] * 2),
        }
    return unet(noisy, timesteps, encoder_hidden_states=text, added_cond_kwargs=added).sample


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
    reference's on items captioned with the safe (or empty) prompt, where nothing should change.
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
    prediction = _predict(unet, noisy, timesteps, batch)
    policy = per_example_mse(prediction, target)
    if loss == "sft":
        return sft_loss(policy[:size])
    with torch.no_grad():
        if reference is None:
            with adapters_disabled(unet):
                ref_prediction = _predict(unet, noisy, timesteps, batch)
        else:
            ref_prediction = _predict(reference, noisy, timesteps, batch)
    ref = per_example_mse(ref_prediction, target)
    out = diffusion_dpo_loss(policy[:size], policy[size:], ref[:size], ref[size:], beta, anchor_weight)
    if not preserve_weight or batch.benign_caption is None or not bool(batch.benign_caption.any()):
        return out
    mask = torch.cat([batch.benign_caption, batch.benign_caption])
    drift = per_example_mse(prediction[mask], ref_prediction[mask]).mean()
    metrics = {**out.metrics, "preserve": float(drift.detach())}
    total = out.loss + preserve_weight * drift
    metrics["loss"] = float(total.detach())
    return LossOutput(total, metrics)
