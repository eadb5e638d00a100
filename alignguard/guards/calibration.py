"""Threshold calibration and the metrics the guard is judged by (pure torch, no sklearn)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from alignguard.data.taxonomy import CATEGORIES
from alignguard.guards.head import Thresholds


@dataclass(frozen=True)
class BinaryMetrics:
    precision: float
    recall: float
    f1: float
    support: int  # positives
    predicted: int  # predicted positives

    def to_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def binary_metrics(predicted: torch.Tensor, target: torch.Tensor) -> BinaryMetrics:
    """Precision, recall and F1 of boolean ``predicted`` [N] against boolean ``target`` [N]."""
    predicted, target = predicted.bool(), target.bool()
    tp = int((predicted & target).sum())
    n_pred, n_pos = int(predicted.sum()), int(target.sum())
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_pos if n_pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return BinaryMetrics(precision, recall, f1, n_pos, n_pred)


def best_f1_threshold(scores: torch.Tensor, target: torch.Tensor, min_threshold: float = 0.05) -> float:
    """The threshold on ``scores`` [N] that maximises F1 against boolean ``target`` [N].

    Candidates are the observed scores (>= ``min_threshold``, so a rare category cannot calibrate
    to "flag everything"); ties go to the higher threshold (fewer false alarms).
    """
    order = torch.argsort(scores, descending=True)
    sorted_scores, sorted_target = scores[order], target[order].float()
    tp = torch.cumsum(sorted_target, 0)  # predicting the top k+1 as positive
    k = torch.arange(1, len(scores) + 1, dtype=torch.float32)
    positives = sorted_target.sum().clamp(min=1)
    f1 = 2 * tp / (k + positives)
    # A threshold equal to score i also admits every later equal score: keep the last of each run.
    last_of_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_run[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    f1 = torch.where(last_of_run & (sorted_scores >= min_threshold), f1, torch.full_like(f1, -1.0))
    best = int(torch.argmax(f1))  # first maximum = highest threshold among ties
    if f1[best] < 0:
        return 0.5
    return float(sorted_scores[best])


def flag_matrix(unsafe: torch.Tensor, categories: torch.Tensor, thresholds: Thresholds) -> torch.Tensor:
    """The categories the policy flags, vectorised: ``[N, 7]`` bool from ``unsafe`` [N] and
    ``categories`` [N, 7] scores. Same rule as :func:`alignguard.guards.decisions.decide_prompt`:
    a category at or above its threshold is flagged; an unsafe-gated prompt with none flagged gets
    its top category."""
    limits = torch.tensor([thresholds.categories[c] for c in CATEGORIES], dtype=categories.dtype)
    flags = categories >= limits
    fallback = (unsafe >= thresholds.unsafe) & ~flags.any(dim=1)
    top = categories.argmax(dim=1)
    flags[fallback, top[fallback]] = True
    return flags


def calibrate(unsafe: torch.Tensor, categories: torch.Tensor, targets: torch.Tensor) -> Thresholds:
    """Best-F1 thresholds on a held-out split: the unsafe gate against "unsafe", each category's
    (joint) score against "unsafe and in this category". targets: [N, 8] as in training."""
    positive = targets > 0.5
    unsafe_threshold = best_f1_threshold(unsafe, positive[:, 0])
    per_category = {
        c: best_f1_threshold(categories[:, k], positive[:, k + 1]) for k, c in enumerate(CATEGORIES)
    }
    return Thresholds(unsafe_threshold, per_category)


def evaluate(
    unsafe: torch.Tensor, categories: torch.Tensor, targets: torch.Tensor, thresholds: Thresholds
) -> dict:
    """Held-out metrics: unsafe-vs-benign (policy rule: any category flagged), the gate alone, and
    per-category precision/recall of the flagged categories against the labels."""
    positive = targets > 0.5
    flags = flag_matrix(unsafe, categories, thresholds)
    return {
        "unsafe_vs_benign": binary_metrics(flags.any(dim=1), positive[:, 0]).to_json(),
        "gate_only": binary_metrics(unsafe >= thresholds.unsafe, positive[:, 0]).to_json(),
        "categories": {
            c: binary_metrics(flags[:, k], positive[:, k + 1]).to_json() for k, c in enumerate(CATEGORIES)
        },
        "prompts": len(targets),
    }
