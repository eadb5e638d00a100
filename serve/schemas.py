"""The HTTP API's request and response models.

:class:`GenerateRequest` is the body of ``POST /v1/generate``: a plain, strict pydantic model
(unknown fields, strings for numbers, NaN and infinities are refused with a 422 that names the
field). Some of its bounds and defaults are the operator's (``serve.limits``, the model's default
size, ``serve.image_format``), so they are not constants of the class: :class:`RequestBounds` holds
them, and :meth:`GenerateRequest.for_service` binds one service's bounds to the model, so that
FastAPI validates against them in the same pass as everything else (one 422 lists every problem)
and the OpenAPI docs (``/docs``) show them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticKnownError

from alignguard.config.schema import ExperimentConfig, ServeLimits
from serve.adapters import MAX_NAME_CHARS
from serve.guards import Verdict

MAX_SEED = 2**32 - 1
ImageFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
# The error types and JSON-schema keywords of pydantic's own ``Field`` constraints, so a configured
# bound answers exactly like a constant one (same type, same message).
_CHECKS = {
    "max_length": ("string_too_long", "maxLength", lambda value, bound: len(value) <= bound),
    "le": ("less_than_equal", "maximum", lambda value, bound: value <= bound),
    "ge": ("greater_than_equal", "minimum", lambda value, bound: value >= bound),
}


@dataclass(frozen=True)
class RequestBounds:
    """A service's bounds and defaults for request fields: ``serve.limits``, the default image
    size (``serve.limits.default_size``, else ``model.resolution``) and ``serve.image_format``."""

    limits: ServeLimits = field(default_factory=ServeLimits)
    default_size: int = 512
    default_format: ImageFormat = "png"

    @classmethod
    def from_config(cls, config: ExperimentConfig) -> RequestBounds:
        limits = config.serve.limits
        return cls(limits, limits.default_size or config.model.resolution, config.serve.image_format)

    def defaults(self) -> dict[str, Any]:
        """The values of the fields a request leaves out."""
        limits, size = self.limits, self.default_size
        return {
            "steps": limits.default_steps,
            "guidance": limits.default_guidance,
            "width": size,
            "height": size,
            "format": self.default_format,
        }

    def constraints(self) -> dict[str, dict[str, float]]:
        """Per field, its configured constraints (``Field`` keywords: ``max_length``, ``le``, ``ge``)
        in the order pydantic checks them."""
        limits = self.limits
        text = {"max_length": limits.max_prompt_chars}
        size = {"le": limits.max_size, "ge": limits.min_size}
        return {
            "prompt": text,
            "negative_prompt": text,
            "steps": {"le": limits.max_steps},
            "guidance": {"le": limits.max_guidance},
            "width": size,
            "height": size,
            "num_images": {"le": limits.max_images},
            "lora_scale": {"le": limits.lora_scale_max, "ge": limits.lora_scale_min},
        }


def _show_bounds(schema: dict[str, Any], model: type[GenerateRequest]) -> None:
    """JSON schema hook: the bound service's defaults and limits, where ``/docs`` shows them."""
    properties = schema["properties"]
    for name, default in model.bounds.defaults().items():
        properties[name]["default"] = default
    for name, constraints in model.bounds.constraints().items():
        target = properties[name]["anyOf"][0] if "anyOf" in properties[name] else properties[name]
        target.update({_CHECKS[kind][1]: bound for kind, bound in constraints.items()})


_DEFAULTS = RequestBounds().defaults()


class GenerateRequest(BaseModel):
    """What to generate. Fields a request leaves out take this service's defaults; the bounds
    shown on the fields are this service's configuration (`serve.limits`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, json_schema_extra=_show_bounds)

    bounds: ClassVar[RequestBounds] = RequestBounds()

    prompt: str = Field(
        min_length=1, description="what to draw; at most serve.limits.max_prompt_chars characters"
    )
    negative_prompt: str | None = Field(None, description="what to avoid; as long as a prompt may be")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="image i uses seed + i; absent: a random seed"
    )
    steps: int = Field(
        _DEFAULTS["steps"], ge=1, description="denoising steps, at most serve.limits.max_steps"
    )
    guidance: float = Field(
        _DEFAULTS["guidance"],
        ge=0,
        allow_inf_nan=False,
        description="classifier-free guidance scale, at most serve.limits.max_guidance",
    )
    width: int = Field(
        _DEFAULTS["width"], multiple_of=8, description="pixels, a multiple of 8 within serve.limits"
    )
    height: int = Field(
        _DEFAULTS["height"], multiple_of=8, description="pixels, a multiple of 8 within serve.limits"
    )
    num_images: int = Field(
        1, ge=1, description="images i = 0, 1, ... at seeds seed + i; at most serve.limits.max_images"
    )
    adapter: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="'merged' (default), a category expert, experts joined by '+', or 'none' "
        "where allowed; see GET /v1/adapters",
    )
    lora_scale: float = Field(
        1.0, allow_inf_nan=False, description="strength of the adapter's LoRA, within serve.limits"
    )
    format: ImageFormat = Field(_DEFAULTS["format"], description="image encoding")
    response: Literal["json", "binary"] = Field(
        "json", description="'binary': the image bytes themselves (one image only)"
    )

    @classmethod
    def for_service(cls, bounds: RequestBounds) -> type[GenerateRequest]:
        """This model with one service's ``bounds`` (a subclass that only binds them)."""
        return type(
            cls.__name__, (cls,), {"bounds": bounds, "__module__": cls.__module__, "__doc__": cls.__doc__}
        )

    @model_validator(mode="before")
    @classmethod
    def _service_defaults(cls, data: Any) -> Any:
        """A ``Field`` default is a constant of the class; the service's defaults fill what is missing."""
        return {**cls.bounds.defaults(), **data} if isinstance(data, dict) else data

    @field_validator(*RequestBounds().constraints())  # the fields with configured bounds
    @classmethod
    def _within_bounds(cls, value: Any, info: ValidationInfo) -> Any:
        """Defined before ``_not_blank``, so a too-long prompt is reported as too long, as pydantic's
        own ``max_length`` would."""
        if value is None:
            return value
        for kind, bound in cls.bounds.constraints()[info.field_name].items():
            error_type, _, holds = _CHECKS[kind]
            if not holds(value, bound):
                raise PydanticKnownError(error_type, {kind: bound})
        return value

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain some text")
        return value


class ImageOut(BaseModel):
    seed: int
    data: str | None = Field(None, description="base64 of the encoded image; null when withheld")
    withheld: bool = False
    verdict: Verdict | None = None


class Timings(BaseModel):
    total_s: float
    queue_s: float
    generate_s: float
    encode_s: float
    guard_s: float
    batch_images: int = Field(description="images in the pipeline call that made these")
    batch_requests: int = Field(description="requests batched into that call")


class GenerateResponse(BaseModel):
    request_id: str
    images: list[ImageOut]
    format: ImageFormat
    media_type: str
    adapter: str
    aligned: bool = Field(description="false when the images come from the unaligned base model")
    base_only: bool
    lora_scale: float
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    prompt_verdict: Verdict | None = None
    timings: Timings


class ErrorResponse(BaseModel):
    error: str
    message: str
    detail: list | dict | None = None
