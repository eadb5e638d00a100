"""The HTTP API's request and response models, with the operator's bounds built in.

The request model is built per service from ``serve.limits`` so that the bounds are enforced by
pydantic *and* shown in the OpenAPI docs (``/docs``). It is strict: unknown fields, strings for
numbers, NaN and infinities are refused with a 422 that names the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from alignguard.config.schema import ServeLimits
from serve.adapters import MAX_NAME_CHARS
from serve.guards import Verdict

MAX_SEED = 2**32 - 1
ImageFormat = Literal["png", "jpeg", "webp"]
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


class _RequestBase(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @field_validator("prompt", check_fields=False)
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain some text")
        return value


def request_model(limits: ServeLimits, default_size: int, default_format: str) -> type[BaseModel]:
    """``GenerateRequest`` with ``limits`` (and the model's default size) built in."""
    size = dict(ge=limits.min_size, le=limits.max_size, multiple_of=8)
    text = dict(max_length=limits.max_prompt_chars)
    fields = {
        "prompt": (str, Field(min_length=1, description="what to draw", **text)),
        "negative_prompt": (str | None, Field(None, description="what to avoid", **text)),
        "seed": (
            int | None,
            Field(None, ge=0, le=MAX_SEED, description="image i uses seed + i; absent: a random seed"),
        ),
        "steps": (int, Field(limits.default_steps, ge=1, le=limits.max_steps)),
        "guidance": (
            float,
            Field(limits.default_guidance, ge=0, le=limits.max_guidance, allow_inf_nan=False),
        ),
        "width": (int, Field(default_size, description="pixels, a multiple of 8", **size)),
        "height": (int, Field(default_size, description="pixels, a multiple of 8", **size)),
        "num_images": (int, Field(1, ge=1, le=limits.max_images)),
        "adapter": (
            str | None,
            Field(
                None,
                max_length=MAX_NAME_CHARS,
                description="'merged' (default), a category expert, experts joined by '+', or 'none' "
                "where allowed; see GET /v1/adapters",
            ),
        ),
        "lora_scale": (
            float,
            Field(1.0, ge=limits.lora_scale_min, le=limits.lora_scale_max, allow_inf_nan=False),
        ),
        "format": (ImageFormat, Field(default_format, description="image encoding")),
        "response": (
            Literal["json", "binary"],
            Field("json", description="'binary': the image bytes themselves (one image only)"),
        ),
    }
    return create_model("GenerateRequest", __base__=_RequestBase, **fields)


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
