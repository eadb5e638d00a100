"""The sharded stage: the one shape of every stage that renders work in shards.

    plan ──► pending shards ──► renderer pool ──► store pool ──► seal
    (pure)   (no valid marker)   model loaded      shard's files,   manifest.json
                                 once per worker   marker LAST      LAST

A stage subclasses :class:`ShardedStage` and declares: its directory and the config sections that
form its identity (one hash, :func:`~alignguard.stages.identity.identity_hash`), ``plan`` (the
shards, a pure function of the config), ``is_done`` (the shard's marker check), its two worker
pools (plain classes, built once per worker) and ``seal``. :func:`run_stage` drives any stage:
a sealed stage with the same identity is a no-op, a directory written for another identity is
refused (:class:`~alignguard.stages.identity.StageConflictError`), a rerun renders only the shards
without a valid marker, and the stage is sealed only when every shard is done.

Where the shards run is the executor's business: :class:`LocalExecutor` runs them in this process
(tests, debugging); ``cluster.stages.RayExecutor`` runs them on Ray Data actor pools.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from alignguard.config.identity import identity_hash, section_config
from alignguard.config.schema import ExperimentConfig, StageResources
from alignguard.io.manifest import stage_status
from alignguard.io.storage import RunDir
from alignguard.stages.claim import claim_directory


class ShardLike(Protocol):
    """A unit of work: serialisable (it travels to the workers as JSON)."""

    def to_json(self) -> str: ...


S = TypeVar("S", bound=ShardLike)


@dataclass(frozen=True)
class Pool:
    """Workers of one kind: ``factory(**kwargs)`` is built once per worker (a model loads once).

    A renderer is called ``worker(shard) -> outputs`` (a dict of numpy arrays and JSON values); a
    store ``store(shard, outputs) -> summary`` (a flat dict of scalars) writes the shard's files and
    its marker last. ``inline`` (stores only): run in the renderer's worker, not a pool of its own,
    for stores too light to be worth an actor. The factory's class name names the workers (progress
    bars, process titles)."""

    factory: Callable[..., Callable]
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    inline: bool = False

    @classmethod
    def sized_by(cls, resources: StageResources, factory: Callable[..., Callable], **kwargs: Any) -> Pool:
        """A pool sized by a stage's ``resources.<stage>`` section (actors, GPUs and CPUs per actor)."""
        return cls(factory, kwargs, resources.concurrency, resources.num_cpus, resources.num_gpus)


@dataclass(frozen=True)
class Task:
    """A function run once before sealing where the workers run (e.g. FID statistics on a GPU)."""

    fn: Callable[..., Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float = 0.0


class ShardedStage(ABC, Generic[S]):
    """A stage of a run: ``<run>/<directory>/``, built from a config on the driver."""

    name: ClassVar[str]  # in messages and as the manifest's ``stage``
    directory: ClassVar[str]  # under the run directory
    sections: ClassVar[tuple[str, ...]] = ()  # the config sections of its identity (+ run.seed)
    claims_directory: ClassVar[bool] = True  # plan.json names the identity the directory is for
    shard_type: ClassVar[type]  # has ``from_json`` (workers rebuild shards from JSON)

    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.run_dir = RunDir(config.run.output_dir)
        self.stage_dir = self.run_dir.sub(self.directory)

    # identity -------------------------------------------------------------------------------
    def identity(self) -> dict:
        return section_config(self.config, self.sections)

    def key(self) -> str:
        """The identity hash: manifests and plan.json carry it; another value means other outputs."""
        return identity_hash(self.identity())

    def is_sealed(self, key: str) -> bool:
        """Complete for this identity (sizes checked; hashing every output is left to ``doctor``)."""
        return stage_status(self.stage_dir, key, verify_hashes=False).complete

    # work -----------------------------------------------------------------------------------
    @abstractmethod
    def plan(self) -> Sequence[S]:
        """Every shard of the stage, in the order they should run (a pure function of the config)."""

    @abstractmethod
    def is_done(self, shard: S) -> bool:
        """Whether the shard's marker exists, is for this very shard, and its files are whole."""

    @abstractmethod
    def renderer(self) -> Pool:
        """The render workers, ``factory(**kwargs)(shard) -> outputs`` (a model loaded once each)."""

    @abstractmethod
    def store(self) -> Pool:
        """The store workers, ``factory(**kwargs)(shard, outputs) -> summary``: files, marker last."""

    @property
    def max_failed_shards(self) -> int:
        """Shards that may fail without failing the run (they stay pending for the next run)."""
        return 0

    def seal_task(self) -> Task | None:
        """Optional work on the cluster before sealing; its result is passed to :meth:`seal`."""
        return None

    @abstractmethod
    def seal(self, shards: Sequence[S], key: str, seconds: float, prepared: Any = None) -> None:
        """Write the stage's tables from the markers of ``shards``, then its manifest, last."""

    def summarize(self, run: StageRun) -> Any:
        """What the CLI prints (an object with ``lines()`` and ``failed_shards``)."""
        return run


class Executor(Protocol):
    def run_shards(self, stage: ShardedStage, pending: Sequence) -> list[dict]:
        """Render and store ``pending``; the stores' summaries (a failed shard has none)."""
        ...

    def run_task(self, task: Task) -> Any: ...


@dataclass
class StageRun:
    """What one run of a stage did."""

    stage_uri: str
    key: str
    shards: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    missing: list = field(default_factory=list)  # pending shards that still have no marker
    summaries: list[dict] = field(default_factory=list)
    render_seconds: float = 0.0
    seconds: float = 0.0
    already_complete: bool = False  # sealed for this identity before the run: nothing was done

    @property
    def failed_shards(self) -> int:
        return len(self.missing)

    @property
    def sealed(self) -> bool:
        return self.already_complete or not self.missing

    def lines(self) -> list[str]:
        if self.already_complete:
            return [f"{self.stage_uri}: already complete: nothing to do"]
        done = len(self.pending) - len(self.missing)
        return [
            f"{self.stage_uri}: rendered {done} shard(s), reused {len(self.shards) - len(self.pending)}, "
            f"failed {len(self.missing)}; {self.seconds:.1f} s"
        ]


def run_stage(stage: ShardedStage, executor: Executor, force: bool = False) -> StageRun:
    """Plan, render what is pending, seal when every shard is done. ``force`` renders every shard."""
    key = stage.key()
    run = StageRun(stage.stage_dir.uri, key)
    if not force and stage.is_sealed(key):
        run.already_complete = True
        return run
    if stage.claims_directory:
        claim_directory(stage.stage_dir, stage.name, key, stage.sections)
    run.shards = list(stage.plan())
    run.pending = run.shards if force else [s for s in run.shards if not stage.is_done(s)]
    start = time.perf_counter()  # the run's seconds: rendering and sealing, not planning
    if run.pending:
        run.summaries = executor.run_shards(stage, run.pending)
    run.render_seconds = time.perf_counter() - start
    run.missing = [s for s in run.pending if not stage.is_done(s)]
    if not run.missing:
        task = stage.seal_task()
        stage.seal(run.shards, key, run.render_seconds, executor.run_task(task) if task else None)
    run.seconds = time.perf_counter() - start
    return run


class LocalExecutor:
    """Runs shards one after the other in this process (one renderer, one store): for tests and
    debugging. A shard that raises counts as failed, up to ``stage.max_failed_shards``."""

    def run_shards(self, stage: ShardedStage, pending: Sequence) -> list[dict]:
        renderer = stage.renderer()
        render = renderer.factory(**renderer.kwargs)
        store_pool = stage.store()
        store = store_pool.factory(**store_pool.kwargs)
        summaries, failures = [], 0
        for shard in pending:
            shard = stage.shard_type.from_json(shard.to_json())  # as the workers see it
            try:
                summaries.append(store(shard, render(shard)))
            except Exception:
                failures += 1
                if failures > stage.max_failed_shards:
                    raise
        return summaries

    def run_task(self, task: Task) -> Any:
        return task.fn(**task.kwargs)
