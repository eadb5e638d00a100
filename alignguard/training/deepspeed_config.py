"""The DeepSpeed config of an expert run, derived from ``training`` (pure dict building)."""

from __future__ import annotations

import torch

from alignguard.config.schema import TrainingSection

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolved_precision(training: TrainingSection, on_gpu: bool) -> str:
    """``precision: auto`` is bf16 on GPUs and fp32 on CPUs."""
    return training.precision if training.precision != "auto" else ("bf16" if on_gpu else "fp32")


def precision_dtype(training: TrainingSection, on_gpu: bool) -> torch.dtype:
    """The dtype the model computes in (and batches are cast to) under ``training.precision``."""
    return _DTYPES[resolved_precision(training, on_gpu)]


def scaled_learning_rate(training: TrainingSection, world_size: int) -> float:
    """``learning_rate``, times batch x accumulation x workers when ``scale_lr`` is set."""
    scale = training.batch_size * training.grad_accum * world_size if training.scale_lr else 1
    return training.learning_rate * scale


def deepspeed_config(training: TrainingSection, on_gpu: bool, world_size: int) -> dict:
    """ZeRO stage, precision, accumulation, clipping, optimizer and warmup, from config.

    AdamW runs as torch's implementation (``torch_adam``), so nothing is JIT-built for it; with
    optimizer offload DeepSpeed's CPU Adam is used instead. Adafactor is not a DeepSpeed optimizer:
    the training loop passes it as a client optimizer and this config then has no ``optimizer``.
    ``precision: auto`` is bf16 on GPUs and fp32 on CPUs.

    ZeRO 1-2 refuse a client optimizer unless told it is allowed; they hand it flattened 1-D fp32
    partitions, so Adafactor keeps a full second moment per LoRA weight instead of row and column
    factors (a few MB for a LoRA; the update rule is otherwise Adafactor's).
    """
    precision = resolved_precision(training, on_gpu)
    config: dict = {
        "train_micro_batch_size_per_gpu": training.batch_size,
        "gradient_accumulation_steps": training.grad_accum,
        "train_batch_size": training.batch_size * training.grad_accum * world_size,
        "zero_optimization": {"stage": training.zero_stage},
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16", "initial_scale_power": 16},
        "steps_per_print": 10**9,  # we report metrics ourselves
        "wall_clock_breakdown": False,
    }
    if training.optimizer == "adafactor" and training.zero_stage > 0:
        config["zero_allow_untested_optimizer"] = True
    if training.max_grad_norm is not None:
        config["gradient_clipping"] = training.max_grad_norm
    if training.offload_optimizer:
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    lr = scaled_learning_rate(training, world_size)
    if training.optimizer == "adamw":
        config["optimizer"] = {
            "type": "AdamW",
            "params": {
                "lr": lr,
                "weight_decay": training.weight_decay,
                "torch_adam": not training.offload_optimizer,
            },
        }
    config["scheduler"] = {
        "type": "WarmupLR",
        "params": {
            "warmup_min_lr": 0.0,
            "warmup_max_lr": lr,
            "warmup_num_steps": max(1, training.warmup_steps),
            "warmup_type": "linear",
        },
    }
    return config


def client_optimizer(training: TrainingSection, parameters: list):
    """The optimizer DeepSpeed is handed instead of building one (Adafactor), or None (AdamW is in
    the config). Constant learning rate: DeepSpeed's WarmupLR schedules it."""
    if training.optimizer != "adafactor":
        return None
    from transformers.optimization import Adafactor

    return Adafactor(
        parameters,
        lr=training.learning_rate,
        relative_step=False,
        scale_parameter=False,
        warmup_init=False,
    )
