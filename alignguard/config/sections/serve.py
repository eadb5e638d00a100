"""``serve``: guarded generation on Ray Serve (replicas, batching, request bounds, ingress)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from alignguard.config.sections.base import (
    NAME_PATTERN,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)
from alignguard.data.taxonomy import CATEGORIES


class AutoscalingSection(Section):
    """Ray Serve's autoscaling of the generator replicas."""

    min_replicas: NonNegativeInt = Field(1, description="fewest generator replicas (0 scales to zero)")
    max_replicas: PositiveInt = Field(1, description="most generator replicas; at least min_replicas")
    target_ongoing_requests: PositiveFloat = Field(
        2.0, description="ongoing requests per replica that the autoscaler aims for"
    )
    upscale_delay_s: NonNegativeFloat = Field(
        10.0, description="seconds the load must stay above target before replicas are added"
    )
    downscale_delay_s: NonNegativeFloat = Field(
        60.0, description="seconds the load must stay below target before replicas are removed"
    )

    @model_validator(mode="after")
    def _min_le_max(self) -> AutoscalingSection:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        return self


class ServeLimits(Section):
    """Bounds on every request field; a request outside them gets a 422 that names the field."""

    max_prompt_chars: PositiveInt = Field(
        1000, description="longest prompt (and negative prompt) in characters"
    )
    max_prompt_tokens: PositiveInt | None = Field(
        None,
        description="longest prompt in tokens; null: the model tokenizer's own limit (77 for SD, 16 for the "
        "toy model)",
    )
    min_size: PositiveInt = Field(64, description="smallest width and height in pixels; a multiple of 8")
    max_size: PositiveInt = Field(1024, description="largest width and height in pixels; a multiple of 8")
    default_size: PositiveInt | None = Field(
        None, description="width and height when a request names none; null: model.resolution"
    )
    max_steps: PositiveInt = Field(50, description="most denoising steps a request may ask for")
    default_steps: PositiveInt = Field(25, description="denoising steps when a request names none")
    max_guidance: NonNegativeFloat = Field(20.0, description="largest guidance scale a request may ask for")
    default_guidance: NonNegativeFloat = Field(7.5, description="guidance scale when a request names none")
    max_images: PositiveInt = Field(4, description="most images per request; at most serve.max_batch_size")
    max_composed_adapters: PositiveInt = Field(
        3, description="most category experts a request may compose ('hate+violence')"
    )
    lora_scale_min: NonNegativeFloat = Field(0.5, description="smallest lora_scale a request may ask for")
    lora_scale_max: PositiveFloat = Field(1.5, description="largest lora_scale a request may ask for")
    max_body_bytes: PositiveInt = Field(
        65536, description="largest request body in bytes, checked before it is parsed"
    )

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

    num_replicas: PositiveInt = Field(1, description="ingress replicas (fixed; no autoscaling)")
    num_cpus: PositiveFloat = Field(0.5, description="CPUs reserved per ingress replica")
    # Serve's default of 5 would silently cap batching and autoscaling downstream: keep it high.
    max_ongoing_requests: PositiveInt = Field(
        256, description="requests one ingress replica handles at once; at least serve.max_ongoing_requests"
    )
    max_queued_requests: PositiveInt = Field(
        256,
        description="requests that may wait for an ingress replica (Serve's max_queued_requests), then 503",
    )


class ServeSection(Section):
    """Guarded generation on Ray Serve. ``max_batch_size`` counts images; ``max_ongoing_requests``
    and ``max_queued_requests`` bound each generator replica; ``request_timeout_s`` bounds a
    request end to end (504 past it)."""

    host: str = Field("127.0.0.1", description="address the HTTP proxy listens on (0.0.0.0: every interface)")
    port: Annotated[int, Field(ge=1, le=65535)] = Field(
        8000, description="HTTP port (`serve --port` overrides)"
    )
    default_adapter: str = Field(
        "merged",
        description="adapter of requests that name none: 'merged', 'none', a category, or categories "
        "joined by '+'",
    )
    allow_no_adapter: bool = Field(
        False, description="let requests ask for adapter 'none' (the unaligned base model)"
    )
    max_batch_size: PositiveInt = Field(8, description="images per generator batch")
    batch_wait_timeout_s: NonNegativeFloat = Field(
        0.05, description="seconds a batch waits for more requests before it runs"
    )
    max_ongoing_requests: PositiveInt = Field(
        16, description="requests one generator replica handles at once; at least max_batch_size"
    )
    max_queued_requests: PositiveInt = Field(
        64,
        description="requests that may wait for a generator replica (Serve's max_queued_requests); beyond: "
        "503 with Retry-After",
    )
    request_timeout_s: PositiveFloat = Field(
        120.0, description="seconds a request may take end to end (504 past it)"
    )
    autoscaling: AutoscalingSection = Field(AutoscalingSection(), description="generator replicas")
    app_name: str = Field("alignguard", pattern=NAME_PATTERN, description="name of the Serve application")
    route_prefix: str = Field("/", pattern=r"^/", description="URL path the API is served under")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable holding the API key (never the key itself)",
    )
    require_default_adapter: bool = Field(
        False, description="refuse to start without the default adapter's weights (else: base-only mode)"
    )
    fuse_default_adapter: bool = Field(
        True,
        description="fuse the merged LoRA (when present) into the UNet at start: no LoRA cost on requests "
        "that use it",
    )
    max_loaded_adapters: PositiveInt = Field(4, description="expert LoRAs resident per replica (LRU)")
    adapter_idle_s: PositiveFloat | None = Field(
        60.0, description="unload LoRAs unused this long, so the default path is the plain fused UNet again"
    )
    retry_after_s: NonNegativeFloat = Field(
        2.0, description="Retry-After seconds sent with a 503 when queues are full"
    )
    graceful_shutdown_timeout_s: PositiveFloat = Field(
        30.0, description="seconds a stopping replica gets to finish its requests"
    )
    image_format: Literal["png", "jpeg", "webp"] = Field(
        "png", description="image encoding when a request names none"
    )
    image_quality: Annotated[int, Field(ge=1, le=100)] = Field(90, description="JPEG and WebP quality, 1-100")
    limits: ServeLimits = Field(ServeLimits(), description="bounds on every request field")
    ingress: IngressSection = Field(IngressSection(), description="the HTTP ingress deployment")

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
