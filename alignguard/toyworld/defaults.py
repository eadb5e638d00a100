"""Light constants of the toy world (importable without torch or diffusers)."""

from dataclasses import dataclass

DEFAULT_STEPS = 10
DEFAULT_GUIDANCE = 5.0


@dataclass(frozen=True)
class BuildSchedule:
    """How long and how the builder trains. The defaults produce the shipped model."""

    vae_steps: int = 600
    vae_batch_size: int = 32
    unet_steps: int = 3000
    batch_size: int = 64
    vae_lr: float = 2e-3
    unet_lr: float = 1e-3
    warmup_steps: int = 100
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    kl_weight: float = 1e-6
    pool_size: int = 16_384
    seed: int = 0
