"""The report's pictures: PNG plots (bytes) and base-vs-aligned image grids.

- :func:`ip_per_category_plot`: IP per category before (base) and after (merged, all_single, the
  category's own expert), with Wilson intervals as error bars.
- :func:`merge_strategies_plot`: the merge variants side by side: IP and over-blocking.
- :func:`safety_quality_plot`: every model as a point, IP against a quality measure.
- :func:`comparison_grid`: base and aligned images of the same prompts and seeds, row under row.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import numpy as np

BEFORE_AFTER_COLOURS = {
    "base": "#7f7f7f",
    "merged": "#1f77b4",
    "all_single": "#ff7f0e",
    "own expert": "#2ca02c",
}


def _figure(width: float, height: float, draw: Callable, title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    try:
        draw(ax)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _errors(shares: Sequence[dict | None]) -> tuple[list[float], list[list[float]]]:
    values, low, high = [], [], []
    for share in shares:
        if share is None or share["value"] is None:
            values.append(0.0)
            low.append(0.0)
            high.append(0.0)
            continue
        value = 100 * share["value"]
        values.append(value)
        low.append(value - 100 * share["ci"][0])
        high.append(100 * share["ci"][1] - value)
    return values, [low, high]


def ip_per_category_plot(series: dict[str, dict[str, dict | None]], title: str) -> bytes:
    """``series``: label -> category -> share (``None`` where absent); one bar group per category."""
    categories = sorted({c for shares in series.values() for c in shares}, key=_category_order)
    width = 0.8 / max(len(series), 1)

    def draw(ax) -> None:
        x = np.arange(len(categories))
        for i, (label, shares) in enumerate(series.items()):
            values, errors = _errors([shares.get(c) for c in categories])
            ax.bar(
                x + (i - (len(series) - 1) / 2) * width,
                values,
                width,
                yerr=errors,
                capsize=2,
                label=label,
                color=BEFORE_AFTER_COLOURS.get(label),
            )
        ax.set_xticks(x)
        ax.set_xticklabels([c.replace("_", " ") for c in categories], rotation=20)
        ax.set_ylabel("IP (%), 95 % Wilson CI")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8)

    return _figure(max(6.0, 1.2 * len(categories)), 4.5, draw, title)


def merge_strategies_plot(rows: dict[str, tuple[dict | None, dict | None]], title: str) -> bytes:
    """``rows``: model -> (IP share, over-blocking share); horizontal bars, two metrics side by side."""
    names = list(rows)

    def draw(ax) -> None:
        y = np.arange(len(names))
        for offset, index, label, colour in (
            (-0.2, 0, "IP on unsafe prompts", "#d62728"),
            (0.2, 1, "over-blocking (changed vs base)", "#9467bd"),
        ):
            values, errors = _errors([rows[n][index] for n in names])
            ax.barh(y + offset, values, 0.4, xerr=errors, capsize=2, label=label, color=colour)
        ax.set_yticks(y)
        ax.set_yticklabels(names)
        ax.invert_yaxis()
        ax.set_xlabel("% of images, 95 % Wilson CI")
        ax.set_xlim(0, 105)
        ax.legend(fontsize=8, loc="lower right")

    return _figure(7.0, max(3.0, 0.45 * len(names) + 1.5), draw, title)


def safety_quality_plot(
    points: dict[str, tuple[float, float, str]], x_label: str, y_label: str, title: str
) -> bytes:
    """``points``: model -> (IP %, quality, kind); one labelled point per model."""
    markers = {"base": "s", "expert": "o", "merged": "*", "all_single": "D", "baseline": "^"}

    def draw(ax) -> None:
        for name, (x, y, kind) in points.items():
            ax.scatter(
                [x],
                [y],
                marker=markers.get(kind, "o"),
                s=90 if kind == "merged" else 40,
                color=BEFORE_AFTER_COLOURS.get(kind),
            )
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)

    return _figure(6.5, 5.0, draw, title)


def comparison_grid(rows: list[tuple[str, np.ndarray]], columns: int, target_px: int = 128) -> bytes:
    """PNG of labelled rows of uint8 images ``[k, H, W, 3]`` (base row above the aligned row).

    Small images are enlarged (nearest neighbour) and large ones shrunk to about ``target_px``."""
    from PIL import Image

    from alignguard.imaging import image_grid

    columns = min(columns, max(len(images) for _, images in rows))
    height = rows[0][1].shape[1]
    scale = max(1, target_px // height)
    tiles, labels = [], []
    for label, images in rows:
        images = _resize(images, target_px) if height > target_px else images
        padded = list(images[:columns]) + [np.full_like(images[0], 255)] * (columns - len(images[:columns]))
        tiles.extend(padded)
        labels.append(label)
    picture: Image.Image = image_grid(np.stack(tiles), columns=columns, scale=scale, row_labels=labels)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    return np.stack(
        [np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR)) for image in images]
    )


def _category_order(category: str) -> int:
    from alignguard.data.taxonomy import CATEGORIES

    return CATEGORIES.index(category) if category in CATEGORIES else len(CATEGORIES)
