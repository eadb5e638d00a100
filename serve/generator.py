"""The generator deployment: one pipeline per replica (a GPU in production), batched, multiplexed.

- ``@serve.batch`` gathers up to ``serve.max_batch_size`` *images* (``batch_size_fn``) for at most
  ``serve.batch_wait_timeout_s``; Serve splits a batch by multiplexed model id, and the engine
  splits it again into compatible groups (same adapter, scale, steps, guidance, size).
- ``serve.multiplexed``: requests for category experts carry their adapter name as the
  multiplexed model id, so the router prefers replicas that already hold those LoRAs; loading
  happens here, from the run directory only, with an LRU of ``serve.max_loaded_adapters``.
- One generation at a time per replica (one worker task; the pipeline runs in a thread so the
  replica still answers health checks and gathers the next batch meanwhile). Batches that
  Serve forms while the pipeline is busy wait in one queue and are merged, up to
  ``max_batch_size`` images, when it frees up: under load every pipeline call is full. Jobs
  whose caller has already timed out are answered, not generated.
- Each job gets its own result: a group that fails answers its own requests with the error
  (a :class:`~serve.engine.GenerationFailed`) and the rest of the batch still succeeds.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass

from ray import serve

from alignguard.config.schema import ExperimentConfig
from serve.adapters import MERGED, NONE, AdapterCatalog
from serve.engine import Engine, GenerationFailed, Job, JobResult

log = logging.getLogger(__name__)
UNHEALTHY_AFTER_FAILURES = 3


def _images_in(jobs: list[Job]) -> int:
    return sum(job.num_images for job in jobs)


@dataclass(eq=False)
class _Pending:
    job: Job
    future: asyncio.Future
    arrived: float  # wall clock


@serve.deployment(name="Generator")
class Generator:
    def __init__(self, config: dict) -> None:
        import torch

        from alignguard.families import load_pipeline

        self.config = ExperimentConfig.model_validate(config)
        serve_cfg = self.config.serve
        if not torch.cuda.is_available():
            torch.set_num_threads(1)  # see the performance notes: one thread per CPU process
        # The pipeline thread is Python-heavy (kernel launches; on small models nearly all of it):
        # hand the GIL to the replica's event loops more often than every 5 ms, so requests keep
        # flowing in and results out while a batch runs.
        sys.setswitchinterval(0.0005)
        catalog = AdapterCatalog.discover(self.config.run.output_dir, serve_cfg)
        self.engine = Engine(
            load_pipeline(self.config.model),
            catalog,
            fuse_default=serve_cfg.fuse_default_adapter,
            max_loaded=serve_cfg.max_loaded_adapters,
            idle_s=serve_cfg.adapter_idle_s,
        )
        self.generate.set_max_batch_size(serve_cfg.max_batch_size)
        self.generate.set_batch_wait_timeout_s(serve_cfg.batch_wait_timeout_s)
        self._pending: list[_Pending] = []
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._max_images = serve_cfg.max_batch_size
        self._failures = 0

        async def load_adapter(adapter: str) -> str:
            plan = catalog.resolve(adapter, explicit=False)
            await asyncio.to_thread(self.engine.ensure_loaded, list(plan.experts))
            return plan.name

        # Wired per instance so the LRU size comes from the config (Serve supports this form).
        self._multiplexed = serve.multiplexed(max_num_models_per_replica=serve_cfg.max_loaded_adapters)(
            load_adapter
        )
        log.info("generator ready: %s", self.engine.describe())

    # Serve's batch handler only queues the jobs and waits for their results; one worker task
    # feeds the pipeline. Batches that Serve forms while the pipeline is busy therefore merge in
    # the queue, and no handler waits behind another's generation once its own results are in.
    @serve.batch(
        max_batch_size=8, batch_wait_timeout_s=0.05, max_concurrent_batches=1024, batch_size_fn=_images_in
    )
    async def generate(self, jobs: list[Job]) -> list[JobResult | Exception]:
        loop, arrived = asyncio.get_running_loop(), time.time()
        entries = [_Pending(job, loop.create_future(), arrived) for job in jobs]
        self._pending.extend(entries)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        try:
            return list(await asyncio.gather(*(entry.future for entry in entries)))
        except asyncio.CancelledError:  # the callers gave up: drop what has not started
            self._pending = [entry for entry in self._pending if entry not in entries]
            raise

    async def _work(self) -> None:
        """Forever: take the oldest pending jobs (up to ``max_batch_size`` images) and run them."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._drop_expired():
                taken = self._take()
                try:
                    await self._run(taken)
                except Exception as exc:  # never let the worker die with callers waiting
                    for entry in taken:
                        if not entry.future.done():
                            entry.future.set_result(GenerationFailed.wrap(exc))

    def _take(self) -> list[_Pending]:
        taken, images = [], 0
        while self._pending and (not taken or images + self._pending[0].job.num_images <= self._max_images):
            entry = self._pending.pop(0)
            taken.append(entry)
            images += entry.job.num_images
        return taken

    async def _run(self, taken: list[_Pending]) -> None:
        jobs, started = [entry.job for entry in taken], time.time()
        try:
            for adapter in {job.adapter for job in jobs if job.adapter not in (MERGED, NONE)}:
                await self._multiplexed(adapter)  # loads the experts; tells the router they are here
            results = await asyncio.to_thread(self.engine.run, jobs)
        except Exception as exc:  # answer every caller; never leave one waiting
            results = [GenerationFailed.wrap(exc)] * len(jobs)
        failed = any(isinstance(result, Exception) for result in results)
        self._failures = self._failures + 1 if failed else 0
        for entry, result in zip(taken, results, strict=True):
            if isinstance(result, JobResult):
                result.extra = {
                    "to_generator_s": max(0.0, entry.arrived - entry.job.sent_at),  # routing + batch wait
                    "pending_s": started - entry.arrived,  # waiting for the pipeline
                }
            if not entry.future.done():
                entry.future.set_result(result)

    def _drop_expired(self) -> bool:
        """Answer (not generate) jobs whose caller has timed out, so that after a burst of 504s the
        replica goes straight back to requests someone still waits for. True if jobs remain."""
        now, kept = time.time(), []
        for entry in self._pending:
            if entry.job.deadline and now > entry.job.deadline:
                if not entry.future.done():
                    entry.future.set_result(
                        GenerationFailed("the request timed out before generation started")
                    )
            elif not entry.future.done():  # done: a cancelled caller
                kept.append(entry)
        self._pending = kept
        return bool(kept)

    async def describe(self) -> dict:
        return self.engine.describe()

    async def check_health(self) -> None:
        """Serve replaces a replica whose generations keep failing (a wedged device)."""
        if self._failures >= UNHEALTHY_AFTER_FAILURES:
            raise RuntimeError(f"{self._failures} generations in a row failed")
