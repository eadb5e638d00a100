"""Test support for the service (tests and benchmarks, not the product): random-LoRA run
directories, free ports, and a generator that waits at a gate the test opens.

A random LoRA (Gaussian ``lora_B``, so it really changes the images) stands in for trained
experts and the merged adapter until those exist; it is saved exactly like a trained one
(:func:`alignguard.lora.save_lora`) with a stage manifest, so the service cannot tell the
difference.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from pathlib import Path

import torch

from alignguard.config.schema import LoraSection
from alignguard.io import Manifest, RunDir, describe_outputs, write_manifest
from alignguard.lora import LORA_WEIGHT_NAME, add_lora, save_lora
from serve.app import RAY_WORKER_PORTS

TOY_LORA = LoraSection(rank=4, alpha=4.0, target_modules=("to_k", "to_v"))


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port outside Ray's worker port range (others run servers on this host too)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in RAY_WORKER_PORTS:
            return port


def random_lora(directory: str | Path, seed: int, scale: float = 0.3, spec: LoraSection = TOY_LORA) -> Path:
    """Save a toy-UNet LoRA with ``lora_B ~ N(0, scale²)`` in ``directory`` (with a manifest)."""
    from alignguard.toyworld.store import load_toy_pipeline

    unet = load_toy_pipeline().unet
    add_lora(unet, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    path = save_lora(unet, directory, spec)
    stage = RunDir(directory)
    manifest = Manifest(
        stage=f"random-lora-{seed}",
        config={"seed": seed, "scale": scale, "random": True},
        config_hash=f"random-{seed}",
        outputs=describe_outputs(stage, [LORA_WEIGHT_NAME]),
    )
    write_manifest(stage, manifest)
    return path


def random_run_dir(
    root: str | Path, experts: Iterable[str] = (), merged: bool = True, seed: int = 0, scale: float = 0.3
) -> Path:
    """A run directory with a random ``merged`` adapter (optional) and random ``experts``."""
    root = Path(root)
    if merged:
        random_lora(root / "merged", seed=seed, scale=scale)
    for index, category in enumerate(experts, start=1):
        random_lora(root / "experts" / category, seed=seed + index, scale=scale)
    return root


def gate_actor():
    """A Ray actor the test opens: ``wait()`` blocks until ``open()``; ``waiting()`` counts callers."""
    import asyncio

    import ray

    @ray.remote(num_cpus=0)
    class Gate:
        def __init__(self) -> None:
            self.opened = asyncio.Event()
            self.callers = 0

        async def wait(self) -> None:
            self.callers += 1
            await self.opened.wait()

        def open(self) -> None:
            self.opened.set()

        def waiting(self) -> int:
            return self.callers

    return Gate.remote()


def gated_generator():
    """The generator deployment, except that every pipeline call first waits at a gate (a
    :func:`gate_actor` passed after the config): a test decides when the pipeline is busy and when
    it frees up, whatever the machine's speed. ``pending_jobs()``: jobs queued behind the pipeline."""
    import ray
    from ray import serve

    from serve.generator import Generator

    class GatedGenerator(Generator.func_or_class):
        def __init__(self, config: dict, gate) -> None:
            super().__init__(config)
            run = self.engine.run

            def gated_run(jobs):
                ray.get(gate.wait.remote())
                return run(jobs)

            self.engine.run = gated_run

        async def pending_jobs(self) -> int:
            return len(self._pending)

    return serve.deployment(GatedGenerator, name="Generator")
