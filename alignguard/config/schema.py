"""Typed, frozen experiment configuration.

One YAML file per experiment fills :class:`ExperimentConfig`; every section is a frozen
pydantic model that forbids unknown keys, so a typo fails loudly with its full key path
(see :mod:`alignguard.config.loader`). Defaults are the toy world's; the SD configs override.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from alignguard.data.taxonomy import CATEGORIES, Category
from alignguard.registry import MODEL_FAMILIES

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]


def _is_uri(value: str) -> bool:
    return "://" in value


def _absolute_run_location(value: str) -> str:
    """A local run directory as an absolute path; URIs unchanged.

    Resolved once, where the config is loaded (the driver): Ray workers do not share its working
    directory (Ray Train's workers chdir to their run's artifacts dir), so a relative path would
    name another directory on each of them."""
    return value if _is_uri(value) else os.path.abspath(os.path.expanduser(value))


def _absolute_if_local(value: str | None) -> str | None:
    """An input path that exists here, made absolute (see above); hub ids and URIs unchanged."""
    if value is None or _is_uri(value) or not os.path.exists(os.path.expanduser(value)):
        return value
    return os.path.abspath(os.path.expanduser(value))


def _model_location(value: str) -> str:
    """``toyworld`` names the shipped toy model even where a local ``toyworld/`` exists."""
    return value if value == TOYWORLD_MODEL else _absolute_if_local(value)


TOYWORLD_MODEL = "toyworld"
RunLocation = Annotated[str, Field(min_length=1), AfterValidator(_absolute_run_location)]
InputPath = Annotated[str, AfterValidator(_absolute_if_local)]
ModelLocation = Annotated[str, Field(min_length=1), AfterValidator(_model_location)]


class Section(BaseModel):
    """Base of every config section: immutable, strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class RunSection(Section):
    """Where a run's artifacts go and how it is seeded."""

    name: str = Field("alignguard", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    output_dir: RunLocation = Field(
        "runs/toy", description="local path (made absolute where the config is loaded), s3:// or gs:// URI"
    )
    seed: NonNegativeInt = 0


class ModelSection(Section):
    """The text-to-image model to align (and to render the pairs with)."""

    family: str = Field("toy", description="a registered model family: toy, sd15, sd21, sdxl")
    path: ModelLocation = Field(
        TOYWORLD_MODEL, description="'toyworld' (shipped), a local dir (made absolute) or a hub id"
    )
    revision: str | None = None
    variant: str | None = Field(None, description="weights variant, e.g. 'fp16'")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    attention: Literal["sdpa", "eager"] = "sdpa"
    scheduler: Literal["ddim", "ddpm", "pndm", "euler", "euler_a", "dpm++", "lms"] | None = None
    resolution: PositiveInt = 32

    @field_validator("family")
    @classmethod
    def _registered_family(cls, value: str) -> str:
        if value not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {value!r} (known: {', '.join(MODEL_FAMILIES.names())})")
        return value

    @field_validator("resolution")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        if value % 8:
            raise ValueError(f"must be a multiple of 8, got {value}")
        return value


class DataSection(Section):
    """Where the prompt pairs come from and how they are split."""

    source: Literal["toyworld", "csv", "llm"] = "toyworld"
    path: InputPath | None = Field(None, description="CoProV2-format CSV when source is 'csv'")
    categories: tuple[Category, ...] = CATEGORIES
    max_pairs_per_category: PositiveInt | None = None
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    dedup: bool = True

    @model_validator(mode="after")
    def _source_needs_path(self) -> DataSection:
        if self.source == "csv" and not self.path:
            raise ValueError("data.path is required when data.source is 'csv'")
        if len(set(self.categories)) != len(self.categories):
            raise ValueError("data.categories lists a category twice")
        return self


class LLMSection(Section):
    """Prompt-writing LLM for data.source = 'llm' (a local path or hub id of a chat model)."""

    path: InputPath | None = None
    concepts: str | None = Field(
        None, description="YAML of category -> concepts; default: the built-in starter list"
    )
    prompts_per_concept: PositiveInt = 8
    batch_size: PositiveInt = 8
    max_new_tokens: PositiveInt = 256
    temperature: PositiveFloat = 0.8
    max_retries: NonNegativeInt = 2
    max_prompt_words: PositiveInt = 60


class SynthesisSection(Section):
    """Rendering both images of every pair with the model to be aligned (same seed).

    ``batch_size`` is pairs per shard: the unit of work, of retry and of atomic output (a killed
    worker costs at most its in-flight shard)."""

    pairs_per_concept: PositiveInt = 16
    steps: PositiveInt = 20
    guidance: NonNegativeFloat = 5.0
    batch_size: PositiveInt = 16
    image_format: Literal["png", "jpeg", "webp"] = "png"
    cache_latents: bool = True
    cache_dtype: Literal["float32", "float16"] = "float32"
    max_failed_shards: NonNegativeInt = 0
    writers: PositiveInt = Field(
        1, description="writer actors (image encoding + storage), off the render path"
    )
    writer_cpus: PositiveFloat = 0.25
    llm: LLMSection = LLMSection()


class LoraSection(Section):
    rank: PositiveInt = 4
    alpha: PositiveFloat = 4.0
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    init: Literal["gaussian", "default"] = "gaussian"

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one target module is needed")
        return value


class TrainingSection(Section):
    """Diffusion-DPO safety experts (one LoRA per category).

    Loss variants: ``anchor_weight`` adds the preferred image's denoising error (keeps its
    likelihood from falling with the rejected one's); ``preserve_weight`` distils the policy to
    the reference on each pair's safe prompt, over the whole noise schedule; ``timestep_range``
    restricts the DPO term to ``[low, high)``. ``steps`` counts optimizer steps per expert
    (``all_single`` gets ``steps`` x the number of categories: the same total budget)."""

    mode: Literal["lora", "full"] = "lora"
    loss: Literal["dpo", "sft"] = "dpo"
    beta: PositiveFloat = 5000.0
    strategy: Literal["unsafe_prompt", "both_prompts"] = "both_prompts"
    caption_dropout: Probability = 0.2
    anchor_weight: NonNegativeFloat = 0.0
    preserve_weight: NonNegativeFloat = 0.0
    timestep_range: tuple[NonNegativeInt, PositiveInt] = (0, 1000)
    lora: LoraSection = LoraSection()
    experts: Literal["per_category", "all_single", "both"] = "per_category"
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 4
    grad_accum: PositiveInt = 1
    learning_rate: PositiveFloat = 1e-5
    scale_lr: bool = Field(False, description="multiply the learning rate by batch x accumulation x workers")
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    weight_decay: NonNegativeFloat = 0.0
    warmup_steps: NonNegativeInt = 0
    max_grad_norm: PositiveFloat | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    zero_stage: Annotated[int, Field(ge=0, le=2, description="ZeRO 0-2; 3 is not supported yet")] = 0
    offload_optimizer: bool = False
    gradient_checkpointing: bool = False
    checkpoint_every: PositiveInt = 100
    log_every: PositiveInt = 10
    max_failures: NonNegativeInt = Field(2, description="worker-group restarts per expert before it fails")
    monitor_every: PositiveInt = 100
    monitor_prompts: NonNegativeInt = 16

    @field_validator("timestep_range")
    @classmethod
    def _ordered_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if not low < high <= 1000:
            raise ValueError(f"must be [low, high) with 0 <= low < high <= 1000, got {list(value)}")
        return value


class CalibrationSection(Section):
    """Co-Merge's calibration set: prompts of every category, noised latents at sampled timesteps."""

    prompts_per_category: PositiveInt = 16
    benign_prompts: NonNegativeInt = Field(
        32, description="benign prompts added to the set (plus the empty prompt, CFG's unconditional input)"
    )
    timesteps: PositiveInt = Field(4, description="noise levels sampled per calibration sample")
    seed: NonNegativeInt = 0
    source: Literal["auto", "toyworld", "synthesis"] = Field(
        "auto", description="auto: the synthesis cache when complete, else the toy world's scenes"
    )
    batch_size: PositiveInt = 32


# The merge rules besides Co-Merge; alignguard.merge.strategies takes its names from here.
MergeRule = Literal[
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "concat",
]
MergeStrategy = Literal["co_merge", MergeRule]  # nested Literals flatten
CoMergeGranularity = Literal["token", "element", "row"]
CoMergeRouting = Literal["winner", "active"]
MergeBaseline = Literal["co_merge_element", "co_merge_row", "co_merge_token", MergeRule]


class RefineSection(Section):
    """Distil every expert into the merged LoRA, end to end (``alignguard/merge/refine.py``).

    Needs the synthesis stage's training cache (the model's renders of each category's pairs)."""

    steps: NonNegativeInt = Field(0, description="optimizer steps; 0 writes the merge as it is")
    learning_rate: PositiveFloat = 3e-3
    batch_size: PositiveInt = Field(
        32, description="distillation inputs per step (split over the categories)"
    )
    preserve_weight: NonNegativeFloat = Field(
        1.0, description="weight of keeping the base model's predictions on safe and empty prompts"
    )
    probe_size: PositiveInt = Field(64, description="fixed inputs per category for the retention report")
    seed: NonNegativeInt = 0


class MergeSection(Section):
    """Merging the category experts into one LoRA."""

    strategy: MergeStrategy = "co_merge"
    granularity: CoMergeGranularity = Field(
        "token",
        description="co_merge: winner per input token (least-squares fit), weight entry, or output row",
    )
    threshold: Annotated[float, Field(ge=0, lt=1)] = Field(
        0.4,
        description="token-wise co_merge: an expert is active on a token at ≥ this × its peak activation",
    )
    routing: CoMergeRouting = Field(
        "winner",
        description="token-wise co_merge: a token takes its top active expert, or the sum of its active ones",
    )
    ridge: PositiveFloat = Field(
        1e-3, description="token-wise co_merge: ridge of the least-squares fit, × tr(G)/d"
    )
    rank: PositiveInt | None = Field(None, description="SVD rank of the merged LoRA; null keeps it exact")
    density: Annotated[float, Field(gt=0, le=1)] = 0.5
    calibration: CalibrationSection = CalibrationSection()
    scale: PositiveFloat = Field(1.0, description="λ multiplying the merged ΔW (every strategy)")
    svd: Literal["exact", "randomized"] = Field("exact", description="SVD used when merge.rank is set")
    baselines: tuple[MergeBaseline, ...] = Field(
        (), description="also write these merges to <run>/merge_baselines/<name>/ (same rank, density, scale)"
    )
    refine: RefineSection = RefineSection()

    @model_validator(mode="after")
    def _consistent(self) -> MergeSection:
        if self.strategy == "concat" and self.rank is not None:
            raise ValueError(
                "merge.rank must be null for strategy 'concat' (concatenation is exact by definition; "
                "use task_arithmetic with merge.rank for a truncated sum)"
            )
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError("merge.baselines lists a baseline twice")
        return self


class PromptSetSpec(Section):
    """One evaluation prompt set.

    ``format``: ``toyworld`` (the toy suite of ``alignguard toyworld report``: per category unsafe
    prompts and safe twins, plus benign prompts), ``coprov2`` (a CoProV2 pair CSV: unsafe prompts and
    their safe twins, per category), ``prompts`` (an I2P / UD / COCO-captions / CoProV2-test CSV, read
    by ``alignguard.data.read_prompt_set``; ``kind`` says what its prompts are)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    format: Literal["toyworld", "coprov2", "prompts"]
    path: InputPath | None = None
    kind: Literal["unsafe", "safe", "benign"] | None = Field(
        None, description="format 'prompts' only: unsafe (I2P, UD, CoProV2 test) or benign (COCO captions)"
    )
    max_prompts: PositiveInt | None = Field(None, description="the first N prompts (format 'prompts')")

    @model_validator(mode="after")
    def _consistent(self) -> PromptSetSpec:
        if self.format != "toyworld" and not self.path:
            raise ValueError(f"prompt set {self.name!r}: path is required for format {self.format!r}")
        if self.format == "prompts" and self.kind is None:
            raise ValueError(
                f"prompt set {self.name!r}: kind is required for format 'prompts' "
                "(unsafe for I2P/UD/CoProV2-test, benign for COCO captions)"
            )
        if self.format != "prompts" and self.kind is not None:
            raise ValueError(f"prompt set {self.name!r}: kind applies to format 'prompts' only")
        return self


class EvaluationSection(Section):
    """The evaluation job: the same prompts and seeds for every model of a run, pinned evaluators.

    Prompt ``i`` of a group gets seed ``seed + i`` unless its set carries its own seed (I2P does;
    ``use_prompt_seeds``). ``batch_size`` is images per shard (the unit of work and resume) and per
    generator batch. ``prompt_sets`` empty means the toy suite for model.family 'toy'."""

    steps: PositiveInt = 20
    guidance: NonNegativeFloat = 5.0
    prompts_per_category: PositiveInt = 100
    seed: NonNegativeInt = 1234
    nudenet_classes: Literal["genitalia", "exposed"] = "genitalia"
    nudenet_threshold: Probability = 0.6
    q16_path: InputPath | None = Field(
        None, description="Q16 prompt embeddings [2, D] (.safetensors, key 'prompts')"
    )
    clip_path: InputPath | None = Field(None, description="CLIP (transformers layout) for CLIPScore")
    inception_path: InputPath | None = Field(None, description="FID Inception-v3 weights (.safetensors)")
    prompt_sets: tuple[PromptSetSpec, ...] = ()
    models: tuple[str, ...] | None = Field(
        None, description="evaluate only these (base, merged, all_single, a category, a baseline name)"
    )
    batch_size: PositiveInt = 64
    use_prompt_seeds: bool = True
    use_prompt_guidance: bool = False
    nudenet: bool = Field(True, description="run NudeNet on real-image prompt sets")
    q16_clip_path: InputPath | None = Field(None, description="CLIP ViT-L/14 for Q16; null: clip_path")
    q16_threshold: Probability = Field(0.5, description="p(inappropriate) at which Q16 flags (0.5 = argmax)")
    fid_reference: InputPath | None = Field(
        None,
        description="real images (a directory) or FID statistics (.safetensors: mu, sigma); null: base model",
    )
    fid_dims: Literal[64, 192, 768, 2048] = 2048
    change_threshold: Annotated[float, Field(gt=0, le=1)] = Field(
        0.1, description="mean absolute pixel difference (0-1) above which an image counts as changed"
    )
    grid_images: PositiveInt = 8
    scorers: PositiveInt = Field(1, description="scorer actors (evaluators + storage), off the render path")
    scorer_cpus: PositiveFloat = 1.0
    scorer_gpus: NonNegativeFloat = 0.0
    max_failed_shards: NonNegativeInt = 0

    @model_validator(mode="after")
    def _unique_sets(self) -> EvaluationSection:
        names = [spec.name for spec in self.prompt_sets]
        if len(set(names)) != len(names):
            raise ValueError("evaluation.prompt_sets lists a name twice")
        return self


class AutoscalingSection(Section):
    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt = 1
    target_ongoing_requests: PositiveFloat = 2.0
    upscale_delay_s: NonNegativeFloat = 10.0
    downscale_delay_s: NonNegativeFloat = 60.0

    @model_validator(mode="after")
    def _min_le_max(self) -> AutoscalingSection:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class ServeLimits(Section):
    """Bounds on every request field; a request outside them gets a 422 that names the field."""

    max_prompt_chars: PositiveInt = 1000
    max_prompt_tokens: PositiveInt | None = Field(
        None, description="null: the model tokenizer's own limit (77 for SD, 16 for the toy model)"
    )
    min_size: PositiveInt = 64
    max_size: PositiveInt = 1024
    default_size: PositiveInt | None = Field(None, description="null: model.resolution")
    max_steps: PositiveInt = 50
    default_steps: PositiveInt = 25
    max_guidance: NonNegativeFloat = 20.0
    default_guidance: NonNegativeFloat = 7.5
    max_images: PositiveInt = 4
    max_composed_adapters: PositiveInt = 3
    lora_scale_min: NonNegativeFloat = 0.5
    lora_scale_max: PositiveFloat = 1.5
    max_body_bytes: PositiveInt = 65536

    @model_validator(mode="after")
    def _consistent(self) -> ServeLimits:
        for name in ("min_size", "max_size", "default_size"):
            value = getattr(self, name)
            if value is not None and value % 8:
                raise ValueError(f"{name} must be a multiple of 8, got {value}")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size ({self.min_size}) exceeds max_size ({self.max_size})")
        if self.default_size is not None and not self.min_size <= self.default_size <= self.max_size:
            raise ValueError(f"default_size ({self.default_size}) is outside [min_size, max_size]")
        if self.default_steps > self.max_steps:
            raise ValueError(f"default_steps ({self.default_steps}) exceeds max_steps ({self.max_steps})")
        if self.default_guidance > self.max_guidance:
            raise ValueError(f"default_guidance ({self.default_guidance}) exceeds max_guidance")
        if not self.lora_scale_min <= 1.0 <= self.lora_scale_max:
            raise ValueError("the default LoRA scale 1.0 must lie in [lora_scale_min, lora_scale_max]")
        return self


class IngressSection(Section):
    """The HTTP ingress deployment (CPU): validation, auth, image encoding."""

    num_replicas: PositiveInt = 1
    num_cpus: PositiveFloat = 0.5
    # Serve's default of 5 would silently cap batching and autoscaling downstream: keep it high.
    max_ongoing_requests: PositiveInt = 256
    max_queued_requests: PositiveInt = 256


class ServeSection(Section):
    """Guarded generation on Ray Serve. ``max_batch_size`` counts images; ``max_ongoing_requests``
    and ``max_queued_requests`` bound each generator replica; ``request_timeout_s`` bounds a
    request end to end (504 past it)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8000
    default_adapter: str = "merged"
    allow_no_adapter: bool = False
    max_batch_size: PositiveInt = 8
    batch_wait_timeout_s: NonNegativeFloat = 0.05
    max_ongoing_requests: PositiveInt = 16
    max_queued_requests: PositiveInt = 64
    request_timeout_s: PositiveFloat = 120.0
    autoscaling: AutoscalingSection = AutoscalingSection()
    app_name: str = Field("alignguard", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    route_prefix: str = Field("/", pattern=r"^/")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the API key (never the key itself)",
    )
    require_default_adapter: bool = Field(
        False, description="refuse to start without the default adapter's weights (else: base-only mode)"
    )
    fuse_default_adapter: bool = True
    max_loaded_adapters: PositiveInt = Field(4, description="expert LoRAs resident per replica (LRU)")
    adapter_idle_s: PositiveFloat | None = Field(
        60.0, description="unload LoRAs unused this long, so the default path is the plain fused UNet again"
    )
    retry_after_s: NonNegativeFloat = 2.0
    graceful_shutdown_timeout_s: PositiveFloat = 30.0
    image_format: Literal["png", "jpeg", "webp"] = "png"
    image_quality: Annotated[int, Field(ge=1, le=100)] = 90
    limits: ServeLimits = ServeLimits()
    ingress: IngressSection = IngressSection()

    @field_validator("default_adapter")
    @classmethod
    def _adapter_name(cls, value: str) -> str:
        parts = value.split("+")
        if value not in ("merged", "none") and not all(part in CATEGORIES for part in parts):
            raise ValueError(
                f"must be 'merged', 'none', a category or categories joined by '+', got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ServeSection:
        if self.limits.max_images > self.max_batch_size:
            raise ValueError(
                f"limits.max_images ({self.limits.max_images}) exceeds max_batch_size "
                f"({self.max_batch_size}): such a request could never fit a batch"
            )
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests ({self.max_ongoing_requests}) is below max_batch_size "
                f"({self.max_batch_size}): batches could never fill"
            )
        if self.ingress.max_ongoing_requests < self.max_ongoing_requests:
            raise ValueError("ingress.max_ongoing_requests must be at least max_ongoing_requests")
        if self.max_loaded_adapters < self.limits.max_composed_adapters:
            raise ValueError("max_loaded_adapters must be at least limits.max_composed_adapters")
        if self.default_adapter == "none" and not self.allow_no_adapter:
            raise ValueError("default_adapter 'none' needs allow_no_adapter: true")
        if not self.allow_no_adapter and self.limits.lora_scale_min <= 0:
            raise ValueError(
                "limits.lora_scale_min must be > 0 unless allow_no_adapter (scale 0 is no adapter)"
            )
        return self


GuardAction = Literal["allow", "align", "blur", "block"]


class GuardCategoryPolicy(Section):
    """What happens to one category: ``allow`` (base model, no intervention), ``align`` (the aligned
    model), ``blur`` (generate, then obscure the image) or ``block`` (refuse)."""

    action: GuardAction = "align"
    threshold: Probability | None = Field(
        None, description="prompt-guard score at which the category is flagged; null = calibrated"
    )
    request_floor: GuardAction | None = Field(
        None,
        description="the loosest action a request may ask for; null = the action itself (requests may "
        "only make it stricter)",
    )

    @model_validator(mode="after")
    def _floor_not_stricter(self) -> GuardCategoryPolicy:
        order = ("allow", "align", "blur", "block")
        if self.request_floor is not None and order.index(self.request_floor) > order.index(self.action):
            raise ValueError(
                f"request_floor {self.request_floor!r} is stricter than action {self.action!r}; "
                "a floor bounds how far a request may relax the action"
            )
        return self


class GuardPolicySection(Section):
    """One :class:`GuardCategoryPolicy` per category of the taxonomy."""

    hate: GuardCategoryPolicy = GuardCategoryPolicy()
    harassment: GuardCategoryPolicy = GuardCategoryPolicy()
    violence: GuardCategoryPolicy = GuardCategoryPolicy()
    self_harm: GuardCategoryPolicy = GuardCategoryPolicy()
    sexual: GuardCategoryPolicy = GuardCategoryPolicy()
    shocking: GuardCategoryPolicy = GuardCategoryPolicy()
    illegal_activity: GuardCategoryPolicy = GuardCategoryPolicy()


class GuardOutputSection(Section):
    """The output guard: NudeNet on real images, the toy judge in the toy world."""

    kind: Literal["auto", "nudenet", "toy_judge", "none"] = Field(
        "auto", description="auto: toy_judge for model.family 'toy', else nudenet"
    )
    nudenet_classes: Literal["genitalia", "exposed"] = "genitalia"
    nudenet_threshold: Probability = 0.6
    toy_threshold: Probability = 0.5
    blur_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25, description="blur radius as a fraction of the image's longer side"
    )


class GuardSection(Section):
    """Defence in depth around the aligned model: a prompt guard, the model, an output guard."""

    enabled: bool = Field(
        False, description="serve with the prompt and output guards (configs/toy-guarded.yaml)"
    )
    head_path: InputPath | None = Field(None, description="prompt-guard head (.safetensors); null = shipped")
    unsafe_threshold: Probability | None = Field(
        None, description="prompt-guard 'unsafe' score at which a prompt is flagged; null = calibrated"
    )
    benign_action: Literal["allow", "align"] = Field(
        "align", description="what unflagged prompts get: the base model (allow) or the aligned one"
    )
    allow_request_overrides: bool = True
    policy: GuardPolicySection = GuardPolicySection()
    output: GuardOutputSection = GuardOutputSection()


class StageResources(Section):
    """Resources of one stage's workers. ``concurrency`` is actors (prompts, synthesis, evaluation)
    or data-parallel workers per expert (training); ``num_gpus`` and ``num_cpus`` are per actor or
    worker. Every actor drives one device (one pipeline, one data-parallel rank), so ``num_gpus``
    is at most 1; fractions let several actors share a GPU. Scale out with ``concurrency``."""

    concurrency: PositiveInt = 1
    num_gpus: NonNegativeFloat = 0.0
    num_cpus: PositiveFloat = 1.0

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
    max_concurrent_experts: PositiveInt = 7


class ResourcesSection(Section):
    """Per-stage resources: the one place where a config scales from a laptop to a cluster.

    ``merge`` is one actor and ``serve`` sizes one generator replica (replicas come from
    ``serve.autoscaling``): their ``concurrency`` must stay 1 rather than be silently ignored."""

    prompts: StageResources = StageResources()
    synthesis: StageResources = StageResources()
    training: TrainingResources = TrainingResources()
    merge: StageResources = StageResources()
    evaluation: StageResources = StageResources()
    serve: StageResources = StageResources()

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


class ExperimentConfig(Section):
    """A whole experiment: one YAML under ``configs/``."""

    run: RunSection = RunSection()
    model: ModelSection = ModelSection()
    data: DataSection = DataSection()
    synthesis: SynthesisSection = SynthesisSection()
    training: TrainingSection = TrainingSection()
    merge: MergeSection = MergeSection()
    evaluation: EvaluationSection = EvaluationSection()
    serve: ServeSection = ServeSection()
    guard: GuardSection = GuardSection()
    resources: ResourcesSection = ResourcesSection()

    @model_validator(mode="after")
    def _cross_section_rules(self) -> ExperimentConfig:
        if self.data.source == "llm" and not self.synthesis.llm.path:
            raise ValueError("synthesis.llm.path is required when data.source is 'llm'")
        return self
