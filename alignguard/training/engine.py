"""What the expert trainer steps: a DeepSpeed engine, or a plain torch optimizer shaped like one.

:class:`ExpertTrainer` needs only the part of DeepSpeed's engine API listed in
:class:`TrainingEngine`. The fleet passes a real DeepSpeed engine (built in ``cluster/``, where
DeepSpeed may be imported); :class:`TorchEngine` gives the same interface around a torch
optimizer, so the trainer runs without DeepSpeed in unit tests and in the benchmarks' plain loop.
:func:`plain_engine` builds one from the ``training`` section as ``deepspeed_config`` builds the
DeepSpeed engine: the same optimizer, learning rate, warmup, accumulation and clipping.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from alignguard.config.schema import TrainingSection
from alignguard.training.deepspeed_config import client_optimizer, scaled_learning_rate


class TrainingEngine(Protocol):
    """The slice of ``deepspeed.DeepSpeedEngine`` the trainer uses."""

    module: torch.nn.Module
    optimizer: Any  # has state_dict() / load_state_dict()
    lr_scheduler: Any  # None, or has state_dict() / load_state_dict()
    global_steps: int
    global_samples: int

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> None: ...

    def get_lr(self) -> list[float]: ...


class TorchEngine:
    """A torch optimizer behind DeepSpeed's engine calls.

    As DeepSpeed does: ``backward`` divides the loss by the accumulation steps; ``step`` is called
    after every micro-batch and steps the optimizer (after clipping), the scheduler and
    ``global_steps`` only at accumulation boundaries.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_scheduler: Any = None,
        grad_accum: int = 1,
        max_grad_norm: float | None = None,
        micro_batch_size: int = 1,
    ) -> None:
        self.module, self.optimizer, self.lr_scheduler = module, optimizer, lr_scheduler
        self.grad_accum, self.max_grad_norm, self.micro_batch_size = (
            grad_accum,
            max_grad_norm,
            micro_batch_size,
        )
        self.global_steps = self.global_samples = 0
        self._micro_steps = 0

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.grad_accum if self.grad_accum > 1 else loss).backward()

    def step(self) -> None:
        self._micro_steps += 1
        self.global_samples += self.micro_batch_size
        if self._micro_steps % self.grad_accum:
            return
        if self.max_grad_norm is not None:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.global_steps += 1

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


def warmup_factor(warmup_steps: int):
    """DeepSpeed's ``WarmupLR`` (linear, from 0) as a ``LambdaLR`` factor of optimizer step k.

    DeepSpeed's schedule is one step late: steps 0 and 1 both run at the minimum (0), step k at
    ``min(1, (k - 1) / warmup)``, and it warms up over at least 2 steps; matched here so that both
    engines follow one schedule (a test compares them).
    """
    warmup = max(2, warmup_steps)
    return lambda k: min(1.0, max(0, k - 1) / warmup)


def plain_engine(module: torch.nn.Module, training: TrainingSection, world_size: int = 1) -> TorchEngine:
    """A :class:`TorchEngine` over ``module``'s trainable parameters with ``training``'s recipe.

    AdamW (fused on a GPU) or Adafactor, the scaled learning rate, DeepSpeed's warmup, clipping
    and accumulation. The weights keep their dtype: no fp32 master copy, unlike DeepSpeed's bf16."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    lr = scaled_learning_rate(training, world_size)
    optimizer = client_optimizer(training, trainable)
    if optimizer is None:
        fused = all(p.is_cuda for p in trainable)
        optimizer = torch.optim.AdamW(
            trainable, lr=lr, weight_decay=training.weight_decay, fused=fused or None
        )
    else:
        for group in optimizer.param_groups:
            group["lr"] = lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(training.warmup_steps))
    return TorchEngine(
        module,
        optimizer,
        lr_scheduler=scheduler,
        grad_accum=training.grad_accum,
        max_grad_norm=training.max_grad_norm,
        micro_batch_size=training.batch_size * world_size,
    )
