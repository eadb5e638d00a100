"""The prompt guard's head: a small MLP on sentence embeddings, and its safetensors file.

Outputs 8 logits: index 0 is "unsafe" (any category), 1..7 are the categories of the taxonomy
(multi-label: a prompt may belong to several). Scores are sigmoids of the logits. The file holds the
weights plus metadata (labels, calibrated thresholds, training provenance) as JSON strings, so one
safetensors file is the whole trained guard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alignguard.data.taxonomy import CATEGORIES, Category
from alignguard.guards.embedding import EMBEDDING_DIM

LABELS: tuple[str, ...] = ("unsafe", *CATEGORIES)
FORMAT_VERSION = "1"


class HeadFormatError(ValueError):
    """A head file that is not a prompt-guard head of this format."""


class PromptGuardHead(nn.Module):
    """``[B, 384]`` embeddings -> ``[B, 8]`` logits (unsafe, then the 7 categories)."""

    def __init__(self, hidden: int = 256, dropout: float = 0.1, in_dim: int = EMBEDDING_DIM) -> None:
        super().__init__()
        self.hidden = hidden
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, len(LABELS))
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings)


@dataclass(frozen=True)
class Thresholds:
    """Score thresholds: ``unsafe`` gates the prompt, ``categories`` flag each category."""

    unsafe: float
    categories: dict[Category, float]

    def to_json(self) -> dict:
        return {"unsafe": self.unsafe, "categories": dict(self.categories)}

    @classmethod
    def from_json(cls, data: dict) -> Thresholds:
        missing = [c for c in CATEGORIES if c not in data.get("categories", {})]
        if "unsafe" not in data or missing:
            raise HeadFormatError(f"thresholds lack {'unsafe' if 'unsafe' not in data else missing}")
        return cls(float(data["unsafe"]), {c: float(data["categories"][c]) for c in CATEGORIES})


@dataclass
class HeadBundle:
    """A trained head with its calibrated thresholds and provenance."""

    head: PromptGuardHead
    thresholds: Thresholds
    info: dict = field(default_factory=dict)


def save_head(bundle: HeadBundle, path: str | Path) -> None:
    """Write the head as safetensors (weights + JSON metadata), atomically."""
    metadata = {
        "format": f"alignguard-prompt-guard/{FORMAT_VERSION}",
        "labels": json.dumps(LABELS),
        "hidden": str(bundle.head.hidden),
        "thresholds": json.dumps(bundle.thresholds.to_json()),
        "info": json.dumps(bundle.info, sort_keys=True),
    }
    tensors = {name: t.detach().contiguous().cpu() for name, t in bundle.head.state_dict().items()}
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(target)


def load_head(path: str | Path) -> HeadBundle:
    """Read a head written by :func:`save_head`; raises :class:`HeadFormatError` on another file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt-guard head not found: {path}")
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("format") != f"alignguard-prompt-guard/{FORMAT_VERSION}":
        raise HeadFormatError(f"{path} is not a prompt-guard head (format {metadata.get('format')!r})")
    if tuple(json.loads(metadata["labels"])) != LABELS:
        raise HeadFormatError(f"{path} has labels {metadata['labels']}, expected {list(LABELS)}")
    head = PromptGuardHead(hidden=int(metadata["hidden"]), dropout=0.0)
    head.load_state_dict(load_file(str(path)))
    head.eval()
    thresholds = Thresholds.from_json(json.loads(metadata["thresholds"]))
    return HeadBundle(head, thresholds, json.loads(metadata.get("info", "{}")))
