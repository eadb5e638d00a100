"""The one Ray Data runner of every sharded stage (``alignguard.stages``).

    pending shards ──► renderer actor pool ──► store actor pool ──► summaries ──► seal
    (one JSON row      stage.renderer():        stage.store():                    on the driver
     = one batch)      model loaded per actor   files, marker last

Faults: Ray Data restarts a killed actor and retries its in-flight shard (actor pools default to
``max_restarts=-1``, ``max_task_retries=-1``); up to ``stage.max_failed_shards`` shards may fail
without failing the run, and stay pending. A crashed job is resumed by running it again, which
renders only the shards without a valid marker; a sealed stage is a no-op (see
:func:`alignguard.stages.run_stage`, which decides all of that; this module only executes).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray

from alignguard.stages.sharded import Pool, ShardedStage, Task, run_stage
from cluster.runtime import init_ray

_JSON = "json:"  # column prefix of a worker output that is a JSON value, not an array


def run_sharded_stage(stage: ShardedStage, force: bool = False) -> Any:
    """Run ``stage`` on Ray (local Ray if no cluster); returns the stage's summary."""
    return stage.summarize(run_stage(stage, RayExecutor(), force))


class RayExecutor:
    """Shards on Ray Data actor pools (sized and resourced by the stage); tasks as Ray tasks."""

    def run_shards(self, stage: ShardedStage, pending: Sequence) -> list[dict]:
        init_ray()
        ray.data.DataContext.get_current().max_errored_blocks = stage.max_failed_shards
        rows = [{"shard": shard.to_json()} for shard in pending]
        dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
        renderer, store = stage.renderer(), stage.store()
        inline = (store.factory, store.kwargs) if store.inline else None
        out = _map(dataset, _named(_Render, renderer), renderer, (stage.shard_type, renderer, inline))
        if not store.inline:
            out = _map(out, _named(_Store, store), store, (stage.shard_type, store))
        return [{k: _scalar(v) for k, v in row.items()} for row in out.iter_rows()]  # streams; bars by Ray

    def run_task(self, task: Task) -> Any:
        init_ray()
        remote = ray.remote(task.fn).options(num_cpus=task.num_cpus, num_gpus=task.num_gpus)
        return ray.get(remote.remote(**task.kwargs))


def _map(dataset, udf: type, pool: Pool, args: tuple):
    return dataset.map_batches(
        udf,
        fn_constructor_args=args,
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=pool.size),
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus,
    )


def _named(udf: type, pool: Pool) -> type:
    """The UDF under the worker's class name: Ray Data names operators, progress bars and actor
    processes after it (``MapBatches(RenderShards)``), so they say what runs there."""
    return type(pool.factory.__name__, (udf,), {"__module__": __name__})


class _Render:
    """One batch = one shard: render it (and store it, for an ``inline`` store)."""

    def __init__(self, shard_type: type, renderer: Pool, inline_store: tuple | None) -> None:
        self.shard_type = shard_type
        self.render = renderer.factory(**renderer.kwargs)
        self.store = inline_store[0](**inline_store[1]) if inline_store else None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard = self.shard_type.from_json(str(batch["shard"][0]))
        outputs = self.render(shard)
        if self.store is not None:
            return _row(self.store(shard, outputs))
        return {"shard": batch["shard"], **_pack(outputs)}


class _Store:
    """One batch = one rendered shard: store its files, marker last; one summary row out."""

    def __init__(self, shard_type: type, store: Pool) -> None:
        self.shard_type = shard_type
        self.store = store.factory(**store.kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        shard = self.shard_type.from_json(str(batch["shard"][0]))
        return _row(self.store(shard, _unpack(batch)))


def _pack(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """A renderer's outputs as one Ray Data row: arrays as tensor columns (no copy through
    pickle), anything else as a JSON string column."""
    packed = {}
    for name, value in outputs.items():
        if isinstance(value, np.ndarray):
            packed[name] = value[None]
        else:
            packed[_JSON + name] = np.array([json.dumps(value)])
    return packed


def _unpack(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    outputs = {}
    for name, column in batch.items():
        if name.startswith(_JSON):
            outputs[name.removeprefix(_JSON)] = json.loads(str(column[0]))
        elif name != "shard":
            outputs[name] = column[0]
    return outputs


def _row(summary: dict) -> dict[str, np.ndarray]:
    return {name: np.array([value]) for name, value in summary.items()}


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
