"""What one safety expert trains on and what it leaves behind, from the experiment config.

The pieces around :class:`~alignguard.training.trainer.ExpertTrainer` that any driver needs (the
Ray Train fleet, the benchmarks' plain loop): the UNet with its adapter and the noise schedule
(:func:`load_policy`), this rank's preference batches (:func:`expert_sampler`), and the expert's
published stage (:func:`publish_expert`: diffusers-format LoRA, metrics, step log, manifest).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from alignguard.config.schema import ExperimentConfig
from alignguard.training.batches import PreferenceSampler


@dataclass(frozen=True)
class ExpertSpec:
    name: str  # a category, or "all_single"
    category: str | None  # None: every category
    steps: int


def load_policy(config: ExperimentConfig, device: torch.device):
    """The UNet to train on ``device`` (with its LoRA, or wholly trainable) and the noise schedule."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from alignguard.families import resolve_model_path
    from alignguard.lora import add_lora

    path = resolve_model_path(config.model)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").to(device)
    if config.training.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if config.training.mode == "lora":
        add_lora(unet, config.training.lora)
    else:
        unet.requires_grad_(True)
    return unet, DDPMScheduler.from_pretrained(path, subfolder="scheduler")


def expert_sampler(
    config: ExperimentConfig, category: str | None, rank: int = 0, world_size: int = 1
) -> PreferenceSampler:
    """This rank's batches: the category's preference pairs (``None``: every category's), and
    every category's safe twins as preservation inputs."""
    from alignguard.io import RunDir
    from alignguard.synthesis.store import load_pair_cache

    everything = load_pair_cache(RunDir(config.run.output_dir).sub("synthesis"))
    training = config.training
    return PreferenceSampler(
        everything.select(category),
        training.strategy,
        training.caption_dropout,
        training.batch_size,
        seed=config.run.seed,
        rank=rank,
        world_size=world_size,
        preserve=everything,
    )


def publish_expert(
    config: ExperimentConfig, expert: ExpertSpec, unet: torch.nn.Module, history: list[dict], seconds: float
) -> None:
    """Rank 0: the expert's diffusers-format LoRA, metrics and manifest (written last)."""
    from alignguard.config.identity import expert_config_hash, expert_stage_config
    from alignguard.io import Manifest, RunDir, describe_outputs, write_manifest
    from alignguard.lora import save_lora

    stage = RunDir(config.run.output_dir).sub("experts", expert.name)
    with tempfile.TemporaryDirectory() as staging:
        if config.training.mode == "lora":
            weights = save_lora(unet, staging, config.training.lora)
        else:  # full fine-tuning: the whole UNet, diffusers layout (loadable as a pipeline's unet)
            unet.save_pretrained(staging, safe_serialization=True)
            weights = Path(staging, "diffusion_pytorch_model.safetensors")
            stage.put_file(Path(staging, "config.json"), "config.json")
        stage.put_file(weights, weights.name)
    final = history[-1] if history else {}
    metrics = {
        "expert": expert.name,
        "steps": expert.steps,
        "train_seconds": round(seconds, 2),
        "final": final,
    }
    stage.write_json("metrics.json", metrics)
    stage.write_text("steps.jsonl", "".join(json.dumps(entry) + "\n" for entry in history))
    outputs = [
        weights.name,
        "metrics.json",
        "steps.jsonl",
        *(["config.json"] if config.training.mode == "full" else []),
    ]
    write_manifest(
        stage,
        Manifest(
            stage=f"experts/{expert.name}",
            config=expert_stage_config(config),
            config_hash=expert_config_hash(config),
            outputs=describe_outputs(stage, outputs),
            seeds={"run": config.run.seed},
            timings={"train": seconds},
            summary=metrics,
        ),
    )
