"""``ExpertTrainer`` without Ray and without DeepSpeed: a tiny random-weight UNet, a torch optimizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from training_support import random_pair_cache

from alignguard.config.schema import LoraSection, TrainingSection
from alignguard.lora import add_lora
from alignguard.models import tiny_sd_pipeline
from alignguard.training.batches import PreferenceSampler
from alignguard.training.engine import TorchEngine, plain_engine, warmup_factor
from alignguard.training.step import preference_loss
from alignguard.training.trainer import ExpertTrainer, step_generator

CPU = torch.device("cpu")
TRAINING = TrainingSection(
    beta=250.0,
    strategy="unsafe_prompt",
    caption_dropout=0.0,
    anchor_weight=1.0,
    preserve_weight=4.0,
    timestep_range=(0, 500),
    lora=LoraSection(rank=2, alpha=2.0, target_modules=("attn2.to_k", "attn2.to_v")),
    batch_size=2,
    learning_rate=3e-3,
    weight_decay=0.01,
    warmup_steps=2,
    max_grad_norm=None,
    precision="fp32",
    checkpoint_every=3,
    log_every=2,
    monitor_every=4,
)


def _sampler(training: TrainingSection) -> PreferenceSampler:
    cache = random_pair_cache(6, seed=0)
    return PreferenceSampler(cache, training.strategy, training.caption_dropout, training.batch_size, seed=0)


def _trainer(
    training: TrainingSection = TRAINING, steps: int = 6, lora_seed: int = 0, **kwargs
) -> ExpertTrainer:
    """A fresh trainer on the same base weights; ``lora_seed`` draws the adapter's initial A."""
    pipe = tiny_sd_pipeline(seed=0)
    torch.manual_seed(lora_seed)
    unet = add_lora(pipe.unet, training.lora)
    return ExpertTrainer(
        plain_engine(unet, training),
        DDPMScheduler.from_config(pipe.scheduler.config),
        _sampler(training),
        training,
        steps=steps,
        seed=0,
        device=CPU,
        **kwargs,
    )


def _lora(trainer: ExpertTrainer) -> dict[str, torch.Tensor]:
    return {
        name: p.detach().clone() for name, p in trainer.engine.module.named_parameters() if "lora" in name
    }


class _Reports:
    """Records what the trainer reports and keeps a copy of every checkpoint directory."""

    def __init__(self, root: Path) -> None:
        self.root, self.steps, self.checkpoints = root, [], {}

    def __call__(self, metrics: dict, checkpoint: str | None) -> None:
        self.steps.append(metrics["step"])
        if checkpoint is not None:
            self.checkpoints[metrics["step"]] = shutil.copytree(
                checkpoint, self.root / f"step{metrics['step']}"
            )


class _CountingMonitor:
    def __init__(self) -> None:
        self.measured = 0

    def measure(self, unet: torch.nn.Module) -> dict[str, float]:
        self.measured += 1
        return {"monitor_ip": 0.5}


def test_the_trainer_steps_logs_checkpoints_and_monitors(tmp_path):
    monitor, reports = _CountingMonitor(), _Reports(tmp_path)
    trainer = _trainer(monitor=monitor)
    before = _lora(trainer)
    history = trainer.fit(report=reports)
    assert [record["step"] for record in history] == list(range(1, 7)) and trainer.next_step == 6
    first = history[0]
    assert list(first)[-3:] == ["lr", "step", "step_seconds"]  # the fleet's step-log order
    assert {"loss", "dpo_loss", "implicit_acc", "preserve", "anchor"} <= set(first)
    assert all(math_finite(record["loss"]) for record in history)
    # The rate the next step runs at, DeepSpeed's WarmupLR over 2 steps: 0 (twice), half, full.
    assert [record["lr"] for record in history[:4]] == pytest.approx([0.0, 1.5e-3, 3e-3, 3e-3])
    assert [("monitor_ip" in record) for record in history] == [False, False, False, True, False, True]
    assert monitor.measured == 2
    assert reports.steps == [2, 3, 4, 6]  # log every 2, checkpoint every 3 and at the end
    assert sorted(reports.checkpoints) == [3, 6]
    files = sorted(p.name for p in reports.checkpoints[3].iterdir())
    assert files == [
        "optimizer-rank0000.json",
        "optimizer-rank0000.safetensors",
        "state.json",
        "trainable.safetensors",
    ]
    state = json.loads((reports.checkpoints[3] / "state.json").read_text())
    assert state["step"] == 3 and [r["step"] for r in state["history"]] == [1, 2, 3]
    assert state["global_steps"] == 3 and state["global_samples"] == 3 * TRAINING.batch_size
    after = _lora(trainer)
    assert any(not torch.equal(before[name], after[name]) for name in before)  # the adapter trained
    assert trainer.engine.global_steps == 6


def math_finite(value: float) -> bool:
    return bool(np.isfinite(value))


def test_a_resumed_trainer_ends_bitwise_where_an_uninterrupted_one_does(tmp_path):
    reports = _Reports(tmp_path)
    uninterrupted = _trainer()
    uninterrupted.fit(report=reports)
    resumed = _trainer(lora_seed=1)  # another initial adapter: everything must come from the checkpoint
    assert any(
        not torch.equal(a, b)
        for a, b in zip(_lora(resumed).values(), _lora(uninterrupted).values(), strict=True)
    )
    resumed.load_checkpoint(str(reports.checkpoints[3]))
    assert resumed.next_step == 3 and [r["step"] for r in resumed.history] == [1, 2, 3]
    history = resumed.fit()
    assert [r["step"] for r in history] == list(range(1, 7))
    expected, got = _lora(uninterrupted), _lora(resumed)
    assert expected.keys() == got.keys()
    for name in expected:  # pinned: bitwise equal (CPU, fp32, one thread, same ops in the same order)
        assert torch.equal(expected[name], got[name]), name
    assert [r["loss"] for r in history] == [r["loss"] for r in uninterrupted.history]
    assert resumed.engine.lr_scheduler.get_last_lr() == uninterrupted.engine.lr_scheduler.get_last_lr()
    assert resumed.engine.global_steps == 6


def test_accumulation_steps_the_optimizer_once_per_step_and_averages_the_micro_batches():
    training = TRAINING.model_copy(update={"grad_accum": 2, "max_grad_norm": 1.0})
    trainer = _trainer(training, steps=2)
    fresh = _trainer(training).engine.module
    history = trainer.fit()
    assert trainer.engine.global_steps == 2 and trainer.engine.global_samples == 4 * training.batch_size
    # Step 0's loss: the mean over its micro-batches (sampler indices 0 and 1), at the initial weights.
    losses = [
        preference_loss(
            fresh,
            trainer.noise_scheduler,
            trainer.batches.batch(micro),
            step_generator(0, 0, micro, 0),
            beta=training.beta,
            anchor_weight=training.anchor_weight,
            preserve_weight=training.preserve_weight,
            timestep_range=training.timestep_range,
        ).metrics["loss"]
        for micro in (0, 1)
    ]
    assert losses[0] != losses[1]
    assert history[0]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)


def test_torch_engine_accumulates_like_deepspeed():
    weight = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.Module()
    module.weight = weight
    engine = TorchEngine(module, torch.optim.SGD([weight], lr=1.0), grad_accum=2, micro_batch_size=3)
    engine.backward((1.0 - weight).sum())  # gradient -1, scaled by 1/2
    engine.step()
    assert weight.item() == 0.0 and engine.global_steps == 0 and engine.global_samples == 3
    engine.backward((1.0 - weight).sum())
    engine.step()  # boundary: the summed gradient -1 steps the weight by +1
    assert weight.item() == pytest.approx(1.0) and weight.grad is None and engine.global_steps == 1


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_the_plain_warmup_matches_deepspeeds_warmup_lr(warmup):
    lr_schedules = pytest.importorskip("deepspeed.runtime.lr_schedules")
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    theirs = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    plain = torch.optim.lr_scheduler.LambdaLR(ours, warmup_factor(warmup))
    deepspeed = lr_schedules.WarmupLR(theirs, 0.0, 0.1, max(1, warmup), warmup_type="linear")
    rates = []
    for _ in range(6):
        rates.append((ours.param_groups[0]["lr"], theirs.param_groups[0]["lr"]))
        plain.step()
        deepspeed.step()
    assert [a for a, _ in rates] == pytest.approx([b for _, b in rates])
