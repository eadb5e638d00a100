"""The per-worker training loop of one safety expert: Ray Train drives it, DeepSpeed runs the step.

Every worker loads the cached latents and text embeddings of its expert's pairs (training never
runs the VAE or the text encoders), the UNet with a LoRA adapter, and a DeepSpeed engine
(data-parallel across the expert's workers). Batches and noise are pure functions of the step,
so a run resumed from the checkpoint of step k replays exactly steps k+1.. of the original run.

Checkpoints (every ``checkpoint_every`` steps) are pickle-free: the trainable weights and each
rank's optimizer state as safetensors + JSON skeletons (``alignguard.training.checkpoint``), merged
by Ray into one directory; ``ray.train.get_checkpoint()`` hands them back after a failure.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

STATE_FILE = "state.json"


@dataclass(frozen=True)
class ExpertSpec:
    name: str  # a category, or "all_single"
    category: str | None  # None: every category
    steps: int


def _step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    return torch.Generator().manual_seed(hash((seed, step, micro, rank)) & 0x7FFF_FFFF_FFFF)


def train_loop(loop_config: dict) -> None:
    """Ray Train worker entry point; ``loop_config`` holds the config JSON and the expert spec."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    import ray.train
    import ray.train.torch

    from alignguard.config.schema import ExperimentConfig

    _quiet_libraries()
    config = ExperimentConfig.model_validate_json(loop_config["config"])
    expert = ExpertSpec(**loop_config["expert"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    state = _build(config, expert, device, world, deepspeed)
    start_step, history = _restore(state, rank, ray.train.get_checkpoint())
    sampler = _sampler(config, expert, rank, world)
    monitor = _monitor(config, expert) if rank == 0 else None
    started = time.perf_counter()
    for step in range(start_step, expert.steps):
        step_start = time.perf_counter()
        metrics = _train_step(state, sampler, config, step, rank, device)
        metrics["step"], metrics["step_seconds"] = step + 1, time.perf_counter() - step_start
        if monitor is not None and (
            (step + 1) % config.training.monitor_every == 0 or step + 1 == expert.steps
        ):
            metrics.update(monitor.measure(state.engine.module))
        history.append(metrics)
        _maybe_report(state, config, expert, step + 1, metrics, history, rank)
    if rank == 0:
        _publish(state, config, expert, history, time.perf_counter() - started)


def _quiet_libraries() -> None:
    """No download/loading progress bars in worker logs (they interleave across workers)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


@dataclass
class _State:
    engine: object
    unet: torch.nn.Module
    noise_scheduler: object
    dtype: torch.dtype


def _build(config, expert: ExpertSpec, device: torch.device, world: int, deepspeed) -> _State:
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from alignguard.lora import add_lora
    from alignguard.models.loading import resolve_model_path
    from alignguard.training.deepspeed_config import client_optimizer, deepspeed_config

    path = resolve_model_path(config.model)
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet").to(device)
    if config.training.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if config.training.mode == "lora":
        add_lora(unet, config.training.lora)
    else:
        unet.requires_grad_(True)
    on_gpu = device.type == "cuda"
    ds_config = deepspeed_config(config.training, on_gpu, world)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=unet,
        model_parameters=trainable,
        optimizer=client_optimizer(config.training, trainable),
        config=ds_config,
    )
    dtype = (
        torch.bfloat16
        if ds_config["bf16"]["enabled"]
        else torch.float16
        if ds_config["fp16"]["enabled"]
        else torch.float32
    )
    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler")
    return _State(engine=engine, unet=unet, noise_scheduler=scheduler, dtype=dtype)


def _sampler(config, expert: ExpertSpec, rank: int, world: int):
    from alignguard.io import RunDir
    from alignguard.synthesis.store import load_pair_cache
    from alignguard.training.batches import PreferenceSampler

    everything = load_pair_cache(RunDir(config.run.output_dir).sub("synthesis"))
    training = config.training
    # Preference pairs: the expert's category. Preservation: every category's safe twins.
    return PreferenceSampler(
        everything.select(expert.category),
        training.strategy,
        training.caption_dropout,
        training.batch_size,
        seed=config.run.seed,
        rank=rank,
        world_size=world,
        preserve=everything,
    )


def _monitor(config, expert: ExpertSpec):
    if config.model.family != "toy" or config.training.monitor_prompts == 0:
        return None
    from alignguard.models.loading import resolve_model_path
    from alignguard.training.monitor import ToyMonitor

    return ToyMonitor(resolve_model_path(config.model), expert.category, config.training.monitor_prompts)


def _train_step(state: _State, sampler, config, step: int, rank: int, device: torch.device) -> dict:
    from alignguard.training.step import preference_loss

    training = config.training
    engine = state.engine
    totals: dict[str, float] = {}
    for micro in range(training.grad_accum):
        batch = sampler.batch(step * training.grad_accum + micro).to(device, state.dtype)
        out = preference_loss(
            engine.module,
            state.noise_scheduler,
            batch,
            _step_generator(config.run.seed, step, micro, rank),
            loss=training.loss,
            beta=training.beta,
            anchor_weight=training.anchor_weight,
            preserve_weight=training.preserve_weight,
            timestep_range=tuple(training.timestep_range),
        )
        engine.backward(out.loss)
        engine.step()  # DeepSpeed steps the optimizer only at accumulation boundaries
        for name, value in out.metrics.items():
            totals[name] = totals.get(name, 0.0) + value / training.grad_accum
    totals["lr"] = float(engine.get_lr()[0])
    return totals


def _maybe_report(
    state: _State, config, expert: ExpertSpec, step: int, metrics: dict, history: list, rank: int
) -> None:
    import ray.train

    training = config.training
    if step % training.checkpoint_every == 0 or step == expert.steps:
        with tempfile.TemporaryDirectory() as directory:
            _save_checkpoint(state, directory, rank, step, history)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
    elif step % training.log_every == 0:
        ray.train.report(metrics)


def _trainable_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in unet.named_parameters() if p.requires_grad}


def _save_checkpoint(state: _State, directory: str, rank: int, step: int, history: list) -> None:
    from safetensors.torch import save_file

    from alignguard.training.checkpoint import save_tree

    save_tree(directory, f"optimizer-rank{rank:04d}", state.engine.optimizer.state_dict())
    if rank == 0:
        save_file(_trainable_state(state.engine.module), os.path.join(directory, "trainable.safetensors"))
        scheduler = state.engine.lr_scheduler.state_dict() if state.engine.lr_scheduler else {}
        meta = {
            "step": step,
            "history": history,
            "scheduler": scheduler,
            "global_steps": state.engine.global_steps,
            "global_samples": state.engine.global_samples,
        }
        Path(directory, STATE_FILE).write_text(json.dumps(meta))


def _restore(state: _State, rank: int, checkpoint) -> tuple[int, list]:
    """Load the last checkpoint, if Ray hands one back: (next step, metric history)."""
    if checkpoint is None:
        return 0, []
    from safetensors.torch import load_file

    from alignguard.training.checkpoint import load_tree

    engine = state.engine
    with checkpoint.as_directory() as directory:
        trainable = load_file(os.path.join(directory, "trainable.safetensors"))
        params = dict(engine.module.named_parameters())
        with torch.no_grad():
            for name, tensor in trainable.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        optimizer_state = load_tree(
            directory, f"optimizer-rank{rank:04d}", fresh=engine.optimizer.state_dict()
        )
        engine.optimizer.load_state_dict(optimizer_state)
        meta = json.loads(Path(directory, STATE_FILE).read_text())
    if engine.lr_scheduler and meta["scheduler"]:
        engine.lr_scheduler.load_state_dict(meta["scheduler"])
    engine.global_steps, engine.global_samples = meta["global_steps"], meta["global_samples"]
    return int(meta["step"]), list(meta["history"])


def _publish(state: _State, config, expert: ExpertSpec, history: list, seconds: float) -> None:
    """Rank 0: the expert's diffusers-format LoRA, metrics and manifest (written last)."""
    from alignguard.config.identity import expert_config_hash, expert_stage_config
    from alignguard.io import Manifest, RunDir, describe_outputs, write_manifest
    from alignguard.lora import save_lora

    stage = RunDir(config.run.output_dir).sub("experts", expert.name)
    with tempfile.TemporaryDirectory() as staging:
        if config.training.mode == "lora":
            weights = save_lora(state.engine.module, staging, config.training.lora)
        else:  # full fine-tuning: the whole UNet, diffusers layout (loadable as a pipeline's unet)
            state.engine.module.save_pretrained(staging, safe_serialization=True)
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
    write_manifest(
        stage,
        Manifest(
            stage=f"experts/{expert.name}",
            config=expert_stage_config(config),
            config_hash=expert_config_hash(config),
            outputs=describe_outputs(
                stage,
                [
                    weights.name,
                    "metrics.json",
                    "steps.jsonl",
                    *(["config.json"] if config.training.mode == "full" else []),
                ],
            ),
            seeds={"run": config.run.seed},
            timings={"train": seconds},
            summary=metrics,
        ),
    )
