"""``training``: the Diffusion-DPO safety experts and their LoRA (``training.lora``)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from alignguard.config.sections.base import (
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Probability,
    Section,
)


class LoraSection(Section):
    rank: PositiveInt = Field(4, description="LoRA rank r of every adapted layer")
    alpha: PositiveFloat = Field(4.0, description="LoRA alpha: the update is scaled by alpha / rank")
    target_modules: tuple[str, ...] = Field(
        ("to_q", "to_k", "to_v", "to_out.0"),
        description="UNet Linear layers to adapt, matched by name suffix (peft's rule); at least one",
    )
    init: Literal["gaussian", "default"] = Field(
        "gaussian",
        description="gaussian: A ~ N(0, 1/r), B = 0 (the released AlignGuard code); default: peft's init",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one target module is needed")
        return value


class TrainingSection(Section):
    """Diffusion-DPO safety experts (one LoRA per category).

    Loss variants: ``anchor_weight`` adds the preferred image's denoising error (keeps its
    likelihood from falling with the rejected one's); ``preserve_weight`` distils the policy to
    the reference on each pair's safe prompt, over the whole noise schedule; ``timestep_range``
    restricts the DPO term to ``[low, high)``. ``steps`` counts optimizer steps per expert
    (``all_single`` gets ``steps`` x the number of categories: the same total budget)."""

    mode: Literal["lora", "full"] = Field(
        "lora", description="train a LoRA adapter (training.lora) or every UNet weight"
    )
    loss: Literal["dpo", "sft"] = Field(
        "dpo",
        description="dpo: Diffusion-DPO on (safe, unsafe) pairs; sft: the safe image alone (a baseline)",
    )
    beta: PositiveFloat = Field(
        5000.0, description="DPO β: sharpness of the preference loss (5000: the paper's value for SD)"
    )
    strategy: Literal["unsafe_prompt", "both_prompts"] = Field(
        "both_prompts",
        description="condition each pair on its unsafe prompt only, or on its safe prompt as well (every "
        "pair then appears twice)",
    )
    caption_dropout: Probability = Field(
        0.2, description="probability that a training item's prompt is replaced by the empty prompt"
    )
    anchor_weight: NonNegativeFloat = Field(
        0.0, description="weight of the preferred image's denoising error added to the loss; 0: off"
    )
    preserve_weight: NonNegativeFloat = Field(
        0.0,
        description="weight of keeping the reference's predictions on safe and empty prompts; 0: off",
    )
    timestep_range: tuple[NonNegativeInt, PositiveInt] = Field(
        (0, 1000),
        description="[low, high) of the timesteps the DPO term is trained on; 0 <= low < high <= 1000",
    )
    lora: LoraSection = Field(LoraSection(), description="the adapter trained when mode is 'lora'")
    experts: Literal["per_category", "all_single", "both"] = Field(
        "per_category",
        description="one expert per category of data.categories, one expert on all of them (all_single), "
        "or both",
    )
    steps: PositiveInt = Field(
        2000, description="optimizer steps per expert (all_single: this x the number of categories)"
    )
    batch_size: PositiveInt = Field(
        4, description="preference items (a pair with one of its prompts) per micro-batch per worker"
    )
    grad_accum: PositiveInt = Field(1, description="micro-batches accumulated per optimizer step")
    learning_rate: PositiveFloat = Field(1e-5, description="peak learning rate (after warmup)")
    scale_lr: bool = Field(False, description="multiply the learning rate by batch x accumulation x workers")
    optimizer: Literal["adamw", "adafactor"] = Field(
        "adamw", description="adamw (torch's; DeepSpeed's CPU Adam with offload_optimizer) or adafactor"
    )
    weight_decay: NonNegativeFloat = Field(0.0, description="AdamW weight decay (not used by adafactor)")
    warmup_steps: NonNegativeInt = Field(
        0, description="optimizer steps of linear warmup to learning_rate, then constant"
    )
    max_grad_norm: PositiveFloat | None = Field(1.0, description="gradient clipping norm; null: no clipping")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="DeepSpeed training precision; auto: bf16 on GPUs, fp32 on CPUs"
    )
    zero_stage: Annotated[int, Field(ge=0, le=2, description="ZeRO 0-2; 3 is not supported yet")] = 0
    offload_optimizer: bool = Field(False, description="keep the optimizer state in CPU memory (DeepSpeed)")
    gradient_checkpointing: bool = Field(
        False, description="recompute UNet activations in the backward pass: less memory, more compute"
    )
    checkpoint_every: PositiveInt = Field(
        100, description="optimizer steps between checkpoints (where a failed expert resumes)"
    )
    log_every: PositiveInt = Field(10, description="optimizer steps between metric reports")
    max_failures: NonNegativeInt = Field(2, description="worker-group restarts per expert before it fails")
    monitor_every: PositiveInt = Field(
        100, description="toy world: optimizer steps between image checks with the exact judge"
    )
    monitor_prompts: NonNegativeInt = Field(
        16, description="toy world: held-out prompt pairs rendered per image check; 0 turns the monitor off"
    )

    @field_validator("timestep_range")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not low < high <= 1000:
            raise ValueError(f"must be [low, high) with 0 <= low < high <= 1000, got {list(value)}")
        return value
