"""The expert fleet: one Ray Train run per expert, many at once, each on its own workers.

The driver fits one ``TorchTrainer`` (Ray Train v2) per expert, ``max_concurrent_experts`` at a
time from a thread pool; each trainer's controller and workers are Ray actors, so the experts run
concurrently on the cluster while the driver threads only wait. The workers run
``cluster.expert_loop.train_loop`` with DeepSpeed. A failing expert fails its own ``fit()`` only;
the others go on, and the summary says which failed. (Ray Tune was the scheduler first; with
Ray 2.60 a function trainable that forwards Train reports can deadlock on its final report —
``FunctionTrainable`` blocked in ``Queue.put`` after the Train run had finished — so Tune is not
used.) Each Train run has a stable name derived from
the expert and the training config: rerunning the same command resumes an interrupted expert
from its last checkpoint (said explicitly in the summary), skips finished experts (verified
manifest), and never resumes a run of a different config.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from alignguard.config.identity import expert_config_hash
from alignguard.config.schema import ExperimentConfig
from alignguard.io import RunDir, stage_status
from alignguard.training.experts import ExpertSpec
from cluster.expert_loop import train_loop
from cluster.runtime import init_ray

ALL_SINGLE = "all_single"


def plan_experts(config: ExperimentConfig) -> list[ExpertSpec]:
    """Per-category experts and/or the all-categories LoRA with the same total step budget."""
    steps, categories = config.training.steps, list(config.data.categories)
    experts = []
    if config.training.experts in ("per_category", "both"):
        experts += [ExpertSpec(name=c, category=c, steps=steps) for c in categories]
    if config.training.experts in ("all_single", "both"):
        experts.append(ExpertSpec(name=ALL_SINGLE, category=None, steps=steps * len(categories)))
    return experts


def training_hash(config: ExperimentConfig) -> str:
    return expert_config_hash(config)


def run_name(config: ExperimentConfig, expert: ExpertSpec) -> str:
    """Stable per (expert, training-relevant config): reuse means resume, by design."""
    return f"{expert.name}-{training_hash(config)[:10]}"


def build_trainer(
    config: ExperimentConfig, expert: ExpertSpec, callbacks: list | None = None
) -> TorchTrainer:
    resources = config.resources.training
    use_gpu = resources.num_gpus > 0
    worker_resources = {"CPU": resources.num_cpus, **({"GPU": resources.num_gpus} if use_gpu else {})}
    return TorchTrainer(
        train_loop,
        train_loop_config={"config": config.model_dump_json(), "expert": asdict(expert)},
        scaling_config=ScalingConfig(
            num_workers=resources.concurrency, use_gpu=use_gpu, resources_per_worker=worker_resources
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=RunConfig(
            name=run_name(config, expert),
            storage_path=RunDir(config.run.output_dir).url("experts", "_ray_train"),
            failure_config=FailureConfig(max_failures=config.training.max_failures),
            callbacks=callbacks or [],
        ),
    )


@dataclass
class ExpertOutcome:
    name: str
    status: str  # trained | resumed | skipped (already complete) | failed
    steps: int = 0
    final: dict | None = None
    seconds: float = 0.0
    error: str = ""


def expert_is_complete(config: ExperimentConfig, name: str) -> bool:
    stage = RunDir(config.run.output_dir).sub("experts", name)
    return stage_status(stage, training_hash(config)).complete


def run_fleet(config: ExperimentConfig) -> list[ExpertOutcome]:
    """Train every pending expert concurrently; returns one outcome per planned expert."""
    synthesis = RunDir(config.run.output_dir).sub("synthesis")
    if not stage_status(synthesis, verify_hashes=False).complete:
        raise FileNotFoundError(
            f"{synthesis.uri} is not a complete synthesis stage: run `alignguard synthesize` first"
        )
    experts = plan_experts(config)
    done = {e.name for e in experts if expert_is_complete(config, e.name)}
    pending = [e for e in experts if e.name not in done]
    resumed = {e.name for e in pending if _has_checkpoints(config, e)}
    outcomes = {name: ExpertOutcome(name, "skipped") for name in done}
    if pending:
        init_ray()
        errors = _run_trials(config, pending)
        for expert in pending:
            outcomes[expert.name] = _outcome(config, expert, errors.get(expert.name), expert.name in resumed)
    for name in done:
        outcomes[name] = _outcome(
            config, next(e for e in experts if e.name == name), None, False, status="skipped"
        )
    return [outcomes[e.name] for e in experts]


def _fit(config: ExperimentConfig, expert: ExpertSpec) -> str | None:
    """Fit one expert's trainer; its error message, or None."""
    try:
        build_trainer(config, expert).fit()
    except Exception as exc:  # one expert's failure must not stop the others
        cause = exc.__cause__ or exc
        return f"{type(cause).__name__}: {str(cause).splitlines()[0][:300] if str(cause) else ''}"
    return None


def _run_trials(config: ExperimentConfig, pending: list[ExpertSpec]) -> dict[str, str]:
    """Fit the pending experts concurrently; returns {expert: error message} for failures."""
    workers = min(len(pending), config.resources.training.max_concurrent_experts)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="expert") as pool:
        futures = {expert.name: pool.submit(_fit, config, expert) for expert in pending}
        results = {name: future.result() for name, future in futures.items()}
    return {name: error for name, error in results.items() if error is not None}


def _has_checkpoints(config: ExperimentConfig, expert: ExpertSpec) -> bool:
    runs = RunDir(config.run.output_dir).sub("experts", "_ray_train", run_name(config, expert))
    return any(name.startswith("checkpoint") for name in runs.listdir())


def _outcome(
    config, expert: ExpertSpec, error: str | None, resumed: bool, status: str | None = None
) -> ExpertOutcome:
    stage = RunDir(config.run.output_dir).sub("experts", expert.name)
    if error is not None or not expert_is_complete(config, expert.name):
        return ExpertOutcome(expert.name, "failed", error=error or "no complete output was written")
    metrics = stage.read_json("metrics.json")
    return ExpertOutcome(
        expert.name,
        status or ("resumed" if resumed else "trained"),
        steps=metrics["steps"],
        final=metrics["final"],
        seconds=metrics["train_seconds"],
    )


def summary_table(outcomes: list[ExpertOutcome]) -> str:
    """A table a person can read: steps, final loss, implicit accuracy, monitor IP, wall time."""
    columns = f"{'expert':<18} {'status':<8} {'steps':>6} {'loss':>8} {'impl.acc':>8}"
    header = f"{columns} {'monitor IP':>10} {'wall s':>8}"
    lines = [header, "-" * len(header)]
    for o in outcomes:
        final = o.final or {}
        ip = final.get("monitor_ip")
        ip_text = "-" if ip is None else f"{ip:.2f}"
        loss, accuracy = final.get("loss", float("nan")), final.get("implicit_acc", float("nan"))
        row = f"{o.name:<18} {o.status:<8} {o.steps:>6} {loss:>8.4f} {accuracy:>8.2f}"
        lines.append(f"{row} {ip_text:>10} {o.seconds:>8.1f}")
        if o.error:
            lines.append(f"  error: {o.error}")
    return "\n".join(lines)
