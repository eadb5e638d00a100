"""Small image utilities: conversion to uint8 and labelled-free image grids for people to look at."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] (any shape ending in 3) to uint8, rounding and clipping."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def image_grid(
    images: Sequence[np.ndarray] | np.ndarray,
    columns: int,
    scale: int = 1,
    pad: int = 1,
    row_labels: Sequence[str] | None = None,
) -> Image.Image:
    """Tile ``[N, H, W, 3]`` images row-major into one picture, ``pad`` white pixels apart,
    each pixel enlarged ``scale`` times (nearest neighbour keeps small images crisp), with an
    optional label left of each row."""
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected [N, H, W, 3] images, got {array.shape}")
    if array.dtype != np.uint8:
        array = to_uint8(array)
    count, height, width, _ = array.shape
    rows = -(-count // columns)
    canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, 3), 255, dtype=np.uint8)
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = pad + row * (height + pad), pad + column * (width + pad)
        canvas[top : top + height, left : left + width] = array[index]
    picture = Image.fromarray(canvas)
    if scale > 1:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    if row_labels:
        picture = _with_row_labels(picture, row_labels, row_height=(height + pad) * scale, top=pad * scale)
    return picture


def _with_row_labels(picture: Image.Image, labels: Sequence[str], row_height: int, top: int) -> Image.Image:
    margin = 8 + 6 * max(len(label) for label in labels)  # PIL's default bitmap font: ~6 px a character
    labelled = Image.new("RGB", (picture.width + margin, picture.height), "white")
    labelled.paste(picture, (margin, 0))
    draw = ImageDraw.Draw(labelled)
    for row, label in enumerate(labels):
        draw.text((4, top + row * row_height + row_height // 2 - 6), label, fill="black")
    return labelled
