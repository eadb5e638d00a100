"""``resources``: per-stage workers, the one place where a config scales from a laptop to a cluster."""

from __future__ import annotations

from pydantic import Field, field_validator

from alignguard.config.sections.base import NonNegativeFloat, PositiveFloat, PositiveInt, Section


class StageResources(Section):
    """Resources of one stage's workers. ``concurrency`` is actors (prompts, synthesis, evaluation)
    or data-parallel workers per expert (training); ``num_gpus`` and ``num_cpus`` are per actor or
    worker. Every actor drives one device (one pipeline, one data-parallel rank), so ``num_gpus``
    is at most 1; fractions let several actors share a GPU. Scale out with ``concurrency``."""

    concurrency: PositiveInt = Field(
        1, description="actors of the stage, or data-parallel workers per expert (training)"
    )
    num_gpus: NonNegativeFloat = Field(
        0.0, description="GPUs per actor or worker, at most 1; fractions share a GPU"
    )
    num_cpus: PositiveFloat = Field(1.0, description="CPUs per actor or worker")

    @field_validator("num_gpus")
    @classmethod
    def _one_device_per_actor(cls, value: float) -> float:
        if value > 1:
            raise ValueError(
                f"must be at most 1, got {value:g}: each actor or worker drives one device, so the other "
                "GPUs would sit idle; raise concurrency instead"
            )
        return value


class TrainingResources(StageResources):
    max_concurrent_experts: PositiveInt = Field(7, description="experts trained at the same time")


class ResourcesSection(Section):
    """Per-stage resources: the one place where a config scales from a laptop to a cluster.

    ``merge`` is one actor and ``serve`` sizes one generator replica (replicas come from
    ``serve.autoscaling``): their ``concurrency`` must stay 1 rather than be silently ignored."""

    prompts: StageResources = Field(StageResources(), description="the prompt-writing LLM actors")
    synthesis: StageResources = Field(StageResources(), description="the rendering actors")
    training: TrainingResources = Field(TrainingResources(), description="the expert trainers")
    merge: StageResources = Field(StageResources(), description="the merge actor (concurrency 1)")
    evaluation: StageResources = Field(StageResources(), description="the rendering actors of evaluation")
    serve: StageResources = Field(
        StageResources(), description="one generator replica (concurrency 1; replicas: serve.autoscaling)"
    )

    @field_validator("merge")
    @classmethod
    def _one_merge_actor(cls, value: StageResources) -> StageResources:
        if value.concurrency != 1:
            raise ValueError(f"concurrency must be 1, got {value.concurrency}: the merge runs in one actor")
        return value

    @field_validator("serve")
    @classmethod
    def _replicas_from_autoscaling(cls, value: StageResources) -> StageResources:
        if value.concurrency != 1:
            raise ValueError(
                f"concurrency must be 1, got {value.concurrency}: it sizes one generator replica; the "
                "number of replicas comes from serve.autoscaling (min_replicas, max_replicas)"
            )
        return value
