"""The training loop of one safety expert, as a plain class (verl-style): the engine is passed in.

:class:`ExpertTrainer` owns what an expert's training does on one rank: the Diffusion-DPO step
over ``grad_accum`` micro-batches, the schedule of steps, the step-log records (``history``),
the checkpoint and log cadence, resuming from a checkpoint, and the image monitor. It imports
neither Ray nor DeepSpeed: the fleet (``cluster/expert_loop.py``) passes a DeepSpeed engine and
a ``report`` callback that hands metrics and checkpoints to Ray Train; unit tests and the
benchmarks' plain loop pass a :class:`~alignguard.training.engine.TorchEngine`.

Batches and noise are pure functions of (seed, step, micro-batch, rank), so a trainer resumed
from the checkpoint of step k replays exactly steps k+1.. of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from typing import Protocol

import torch

from alignguard.config.schema import TrainingSection
from alignguard.training.batches import PreferenceBatch
from alignguard.training.checkpoint import load_engine_checkpoint, save_engine_checkpoint
from alignguard.training.engine import TrainingEngine
from alignguard.training.step import preference_loss

# report(metrics, checkpoint directory or None): called on log and checkpoint steps; the
# directory is temporary, valid only during the call (Ray Train copies it into storage).
Report = Callable[[dict, str | None], None]


class BatchSource(Protocol):
    def batch(self, index: int) -> PreferenceBatch: ...


class Monitor(Protocol):
    def measure(self, unet: torch.nn.Module) -> dict[str, float]: ...


def step_generator(seed: int, step: int, micro: int, rank: int) -> torch.Generator:
    """The CPU generator of one micro-batch's timesteps and noise (ints hash the same in every process)."""
    return torch.Generator().manual_seed(hash((seed, step, micro, rank)) & 0x7FFF_FFFF_FFFF)


class ExpertTrainer:
    """Train ``engine.module`` for ``steps`` optimizer steps on ``batches`` (this rank's).

    ``dtype``: batches are cast to it (the engine's compute precision). ``monitor``: measured every
    ``training.monitor_every`` steps and at the last (rank 0 only, by the caller's choice).
    ``reference``: a separate frozen UNet as the DPO reference (default: the adapter disabled).
    ``autocast_dtype``: run the loss under ``torch.autocast`` (fp32 weights, low-precision math).
    """

    def __init__(
        self,
        engine: TrainingEngine,
        noise_scheduler,
        batches: BatchSource,
        training: TrainingSection,
        *,
        steps: int,
        seed: int,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        monitor: Monitor | None = None,
        reference: torch.nn.Module | None = None,
        autocast_dtype: torch.dtype | None = None,
    ) -> None:
        self.engine, self.noise_scheduler, self.batches = engine, noise_scheduler, batches
        self.training = training
        self.steps, self.seed, self.device, self.dtype, self.rank = steps, seed, device, dtype, rank
        self.monitor, self.reference, self.autocast_dtype = monitor, reference, autocast_dtype
        self.next_step = 0  # optimizer steps done so far
        self.history: list[dict] = []  # one record per step: the step log

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches) of step index ``step``: its loss
        metrics, averaged over the micro-batches, and the learning rate."""
        training, engine = self.training, self.engine
        totals: dict[str, float] = {}
        for micro in range(training.grad_accum):
            batch = self.batches.batch(step * training.grad_accum + micro).to(self.device, self.dtype)
            with self._autocast():
                out = preference_loss(
                    engine.module,
                    self.noise_scheduler,
                    batch,
                    step_generator(self.seed, step, micro, self.rank),
                    loss=training.loss,
                    beta=training.beta,
                    anchor_weight=training.anchor_weight,
                    reference=self.reference,
                    preserve_weight=training.preserve_weight,
                    timestep_range=tuple(training.timestep_range),
                )
            engine.backward(out.loss)
            engine.step()  # the engine steps the optimizer only at accumulation boundaries
            for name, value in out.metrics.items():
                totals[name] = totals.get(name, 0.0) + value / training.grad_accum
        totals["lr"] = float(engine.get_lr()[0])
        return totals

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def fit(self, report: Report | None = None) -> list[dict]:
        """Run the remaining steps; returns the history (every step's record)."""
        for step in range(self.next_step, self.steps):
            started = time.perf_counter()
            metrics = self.train_step(step)
            metrics["step"], metrics["step_seconds"] = step + 1, time.perf_counter() - started
            if self.monitor is not None and self.is_monitor_step(step + 1):
                metrics.update(self.monitor.measure(self.engine.module))
            self.history.append(metrics)
            self.next_step = step + 1
            if report is not None:
                self._report(report, metrics)
        return self.history

    def is_checkpoint_step(self, step: int) -> bool:
        return step % self.training.checkpoint_every == 0 or step == self.steps

    def is_monitor_step(self, step: int) -> bool:
        return step % self.training.monitor_every == 0 or step == self.steps

    def _report(self, report: Report, metrics: dict) -> None:
        step = self.next_step
        if self.is_checkpoint_step(step):
            with tempfile.TemporaryDirectory() as directory:
                self.save_checkpoint(directory)
                report(metrics, directory)
        elif step % self.training.log_every == 0:
            report(metrics, None)

    def save_checkpoint(self, directory: str) -> None:
        """This rank's part of a checkpoint of the steps done so far (``checkpoint`` module)."""
        save_engine_checkpoint(directory, self.engine, self.rank, self.next_step, self.history)

    def load_checkpoint(self, directory: str) -> None:
        """Resume from a checkpoint: weights, optimizer, scheduler, step and history."""
        self.next_step, self.history = load_engine_checkpoint(directory, self.engine, self.rank)
