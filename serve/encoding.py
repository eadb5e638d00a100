"""Image encoding (PNG / JPEG / WebP) for the HTTP answers.

Encoding is CPU work (a 1024 px PNG ~200 ms): the ingress does it, in a thread, so the
generator replicas (GPUs in production) only ever generate.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(image: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """One ``[H, W, 3]`` uint8 image as ``fmt`` bytes (PNG lossless; JPEG/WebP at ``quality``)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 image, got {image.dtype} {image.shape}")
    buffer = io.BytesIO()
    options = {"compress_level": 1} if fmt == "png" else {"quality": quality}
    Image.fromarray(image).save(buffer, format=_PIL_FORMATS[fmt], **options)
    return buffer.getvalue()


def encode_images(images: np.ndarray, fmt: str, quality: int = 90) -> list[bytes]:
    return [encode_image(image, fmt, quality) for image in images]


def to_base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_image(data: bytes) -> np.ndarray:
    """Bytes of any supported format back to ``[H, W, 3]`` uint8 (for clients and tests)."""
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))
