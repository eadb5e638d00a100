"""The per-worker entry point of one safety expert: Ray Train wraps the core's ``ExpertTrainer``.

Every worker loads the cached latents and text embeddings of its expert's pairs (training never
runs the VAE or the text encoders), the UNet with a LoRA adapter, and a DeepSpeed engine
(data-parallel across the expert's workers), and hands them to
:class:`alignguard.training.trainer.ExpertTrainer`, which owns the step, the schedule and the
step log. What is Ray's or DeepSpeed's stays here: building the engine, ``ray.train.report``
with each checkpoint, and ``ray.train.get_checkpoint()`` to resume after a failure.

Checkpoints (every ``checkpoint_every`` steps) are pickle-free: the trainable weights and each
rank's optimizer state as safetensors + JSON skeletons (``alignguard.training.checkpoint``), merged
by Ray into one directory.
"""

from __future__ import annotations

import os
import time

import torch

from alignguard.training.experts import ExpertSpec

__all__ = ["ExpertSpec", "build_deepspeed_engine", "train_loop"]


def train_loop(loop_config: dict) -> None:
    """Ray Train worker entry point; ``loop_config`` holds the config JSON and the expert spec."""
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import deepspeed
    import ray.train
    import ray.train.torch

    from alignguard.config.schema import ExperimentConfig
    from alignguard.training.experts import expert_sampler, load_policy, publish_expert
    from alignguard.training.trainer import ExpertTrainer

    _quiet_libraries()
    config = ExperimentConfig.model_validate_json(loop_config["config"])
    expert = ExpertSpec(**loop_config["expert"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    unet, noise_scheduler = load_policy(config, device)
    engine, dtype = build_deepspeed_engine(deepspeed, unet, config.training, device, world)
    trainer = ExpertTrainer(
        engine,
        noise_scheduler,
        expert_sampler(config, expert.category, rank, world),
        config.training,
        steps=expert.steps,
        seed=config.run.seed,
        device=device,
        dtype=dtype,
        rank=rank,
        monitor=_monitor(config, expert) if rank == 0 else None,
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainer.load_checkpoint(directory)
    started = time.perf_counter()
    history = trainer.fit(report=_report_to_ray)
    if rank == 0:
        publish_expert(config, expert, engine.module, history, time.perf_counter() - started)


def _quiet_libraries() -> None:
    """No download/loading progress bars in worker logs (they interleave across workers)."""
    import diffusers.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def build_deepspeed_engine(
    deepspeed, unet: torch.nn.Module, training, device: torch.device, world_size: int
) -> tuple[object, torch.dtype]:
    """A DeepSpeed engine over ``unet``'s trainable parameters, configured from ``training``
    (``alignguard.training.deepspeed_config``), and the dtype batches are cast to.

    ``deepspeed`` is the imported module: callers import it after setting ``DS_ACCELERATOR``."""
    from alignguard.training.deepspeed_config import client_optimizer, deepspeed_config, precision_dtype

    on_gpu = device.type == "cuda"
    trainable = [p for p in unet.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(
        model=unet,
        model_parameters=trainable,
        optimizer=client_optimizer(training, trainable),
        config=deepspeed_config(training, on_gpu, world_size),
    )
    return engine, precision_dtype(training, on_gpu)


def _monitor(config, expert: ExpertSpec):
    from alignguard.families import get_family, resolve_model_path

    if not get_family(config.model.family).judges_training or config.training.monitor_prompts == 0:
        return None
    from alignguard.training.monitor import ToyMonitor

    return ToyMonitor(resolve_model_path(config.model), expert.category, config.training.monitor_prompts)


def _report_to_ray(metrics: dict, checkpoint_directory: str | None) -> None:
    """Every rank reports; Ray Train merges the ranks' checkpoint directories into one."""
    import ray.train

    if checkpoint_directory is None:
        ray.train.report(metrics)
    else:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_directory))
