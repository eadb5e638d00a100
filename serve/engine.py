"""The generation engine of one replica: a pipeline, its adapters, batched seed-exact generation.

No Ray here (the Serve deployment in :mod:`serve.generator` wraps it), so it is tested directly.

**Adapters without copies of the UNet.** The default adapter (``merged``) is fused into the UNet
weights at start-up, so the common path runs at base-model speed. Every other adapter is an
unfused peft LoRA on the same UNet, and because LoRA deltas add linearly, the fused weights are
*compensated* rather than restored: with W' = W + ΔM,

- ``none``            = W' − ΔM             (adapters {merged: −1})
- ``merged`` at s     = W' + (s − 1)·ΔM     (adapters {merged: s − 1}; s = 1 disables LoRA)
- experts E at s      = W' − ΔM + s·Σ ΔE    (adapters {merged: −1, e: s for e in E})

Exact in real arithmetic; in float32 the images differ from a separately loaded pipeline by
~1e-6 (in bf16 by the rounding of W' itself). The base weights are never modified after the
fuse, so no drift builds up however requests alternate. Expert sets are summed (each expert
moves its own category) with one shared scale.

**Seed-exact batching.** Every image has its own ``torch.Generator`` (see
:func:`alignguard.generation.generate`): image ``i`` of a request with seed ``s`` uses seed
``s + i``, whatever else shares its batch.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from diffusers import DiffusionPipeline

from alignguard.generation import generate
from alignguard.imaging import to_uint8
from alignguard.lora import LORA_WEIGHT_NAME
from serve.adapters import MERGED, AdapterCatalog, AdapterError, AdapterPlan

log = logging.getLogger(__name__)
_FUSE_NAME = "fuse_merged"


@dataclass(frozen=True)
class Job:
    """One validated request: ``num_images`` images of ``prompt`` with seeds ``seed, seed+1, ...``."""

    prompt: str
    seed: int
    num_images: int = 1
    steps: int = 10
    guidance: float = 5.0
    width: int = 32
    height: int = 32
    negative_prompt: str = ""
    adapter: str = MERGED
    lora_scale: float = 1.0
    sent_at: float = 0.0  # wall clock when the ingress sent it (timings only)
    deadline: float = 0.0  # wall clock after which nobody waits for it any more (0: none)

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.num_images)]

    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call (one adapter setting, one shape)."""
        return (
            self.adapter,
            self.lora_scale,
            self.steps,
            self.guidance,
            self.width,
            self.height,
            self.negative_prompt,
        )


@dataclass
class JobResult:
    """Images ``[num_images, H, W, 3]`` uint8 and how they were made."""

    images: np.ndarray
    adapter: str
    batch_images: int  # images in the pipeline call that made these
    batch_requests: int
    generate_s: float
    extra: dict = field(default_factory=dict)


def adapter_weights(plan: AdapterPlan, scale: float, fused: bool) -> dict[str, float]:
    """peft adapter weights that realise ``plan`` at ``scale`` on a UNet whose weights hold the
    merged LoRA (``fused``) or are the plain base weights. Empty: run with LoRA disabled."""
    compensate = {MERGED: -1.0} if fused else {}
    if plan.merged:
        if fused:
            return {} if scale == 1.0 else {MERGED: scale - 1.0}
        return {MERGED: scale}
    if plan.is_none:
        return compensate
    return {**compensate, **{expert: scale for expert in plan.experts}}


class GenerationFailed(RuntimeError):
    """A job could not be generated; returned (not raised) so one bad group fails only its own
    requests. Holds only a message, so it crosses process boundaries intact."""

    @classmethod
    def wrap(cls, exc: BaseException) -> Exception:
        if isinstance(exc, (AdapterError, GenerationFailed)):
            return exc
        return cls(f"{type(exc).__name__}: {str(exc)[:500]}")


class Engine:
    """A pipeline with the default adapter fused and up to ``max_loaded`` other LoRAs resident."""

    def __init__(
        self,
        pipe: DiffusionPipeline,
        catalog: AdapterCatalog,
        fuse_default: bool = True,
        max_loaded: int = 4,
        idle_s: float | None = None,
    ) -> None:
        self.pipe = pipe
        self.catalog = catalog
        self.max_loaded = max_loaded
        self.idle_s = idle_s
        self.resident: OrderedDict[str, float] = OrderedDict()  # peft adapter name -> last use, LRU order
        self.fused = fuse_default and catalog.merged.available
        if self.fused:
            self._fuse_merged()

    def _fuse_merged(self) -> None:
        with self.catalog.local_weights(MERGED) as directory:
            self.pipe.load_lora_weights(directory, weight_name=LORA_WEIGHT_NAME, adapter_name=_FUSE_NAME)
        self.pipe.fuse_lora(adapter_names=[_FUSE_NAME], lora_scale=1.0)
        self.pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go

    def describe(self) -> dict:
        return {
            "mode": "base-only" if self.catalog.base_only else ("fused" if self.fused else "unfused"),
            "merged_fused": self.fused,
            "default": self.catalog.default.name,
            "resident_adapters": list(self.resident),
        }

    # -- adapters ---------------------------------------------------------------------------

    def ensure_loaded(self, names: Sequence[str]) -> None:
        """Make ``names`` resident (LRU: least recently used others are deleted to make room)."""
        for name in names:
            if name in self.resident:
                self.resident.move_to_end(name)
                self.resident[name] = time.monotonic()
                continue
            while len(self.resident) >= self.max_loaded + 1:  # +1: merged's compensator
                victim = next(n for n in self.resident if n not in names)
                self.pipe.delete_adapters([victim])
                del self.resident[victim]
            with self.catalog.local_weights(name) as directory:
                self.pipe.load_lora_weights(directory, weight_name=LORA_WEIGHT_NAME, adapter_name=name)
            self.resident[name] = time.monotonic()
            log.info("loaded adapter %s (%d resident)", name, len(self.resident))

    def unload_all(self) -> None:
        """Remove every unfused LoRA layer: the default path is then the plain fused UNet."""
        if self.resident:
            self.pipe.unload_lora_weights()
            self.resident.clear()

    def unload_idle(self, now: float | None = None) -> None:
        """Resident LoRAs cost the default path too (peft wraps every target layer, ~3-10% on the
        toy model): once all of them sit unused for ``idle_s``, remove the wrappers."""
        now = time.monotonic() if now is None else now
        if self.idle_s is not None and self.resident and now - max(self.resident.values()) > self.idle_s:
            log.info("unloading idle adapters %s", list(self.resident))
            self.unload_all()

    def activate(self, plan: AdapterPlan, scale: float) -> dict[str, float]:
        weights = adapter_weights(plan, scale, self.fused)
        if not weights:
            if self.resident:
                self.pipe.disable_lora()
            return weights
        self.ensure_loaded(list(weights))
        self.pipe.enable_lora()
        self.pipe.set_adapters(list(weights), list(weights.values()))
        return weights

    # -- generation -------------------------------------------------------------------------

    def run(self, jobs: Sequence[Job]) -> list[JobResult | Exception]:
        """Generate every job; compatible jobs share one pipeline call. Results in job order; a
        group that fails yields its exception (see :class:`GenerationFailed`) for its jobs only."""
        groups: dict[tuple, list[int]] = {}
        for index, job in enumerate(jobs):
            groups.setdefault(job.batch_key(), []).append(index)
        results: list[JobResult | Exception | None] = [None] * len(jobs)
        for indices in groups.values():
            try:
                outputs: list = self._run_group([jobs[i] for i in indices])
            except Exception as exc:
                log.exception("generation failed for %d job(s)", len(indices))
                outputs = [GenerationFailed.wrap(exc)] * len(indices)
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        self.unload_idle()
        return results  # type: ignore[return-value]

    def _run_group(self, jobs: list[Job]) -> list[JobResult]:
        first = jobs[0]
        plan = self.catalog.resolve(first.adapter, explicit=False)
        self.activate(plan, first.lora_scale)
        prompts = [job.prompt for job in jobs for _ in range(job.num_images)]
        seeds = [seed for job in jobs for seed in job.seeds]
        start = time.perf_counter()
        images = generate(
            self.pipe,
            prompts,
            seeds,
            steps=first.steps,
            guidance=first.guidance,
            batch_size=len(prompts),
            negative_prompt=first.negative_prompt or None,
            height=first.height,
            width=first.width,
        )
        seconds = time.perf_counter() - start
        images = to_uint8(images)
        results, offset = [], 0
        for job in jobs:
            chunk = images[offset : offset + job.num_images]
            offset += job.num_images
            results.append(JobResult(chunk, plan.name, len(prompts), len(jobs), seconds))
        return results
