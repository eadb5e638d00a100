"""Merge rules on stacked weight updates ΔW_i ``[n, out, in]`` (fp32), one layer at a time.

Every rule acts on the full products ΔW_i = (α/r)·B_i·A_i, never on A and B separately:
merging factors separately (what peft's ``add_weighted_adapter`` does for ``linear``, ``ties``,
``dare_*`` and ``magnitude_prune``) multiplies Σ B_i by Σ A_j and so adds cross terms B_i·A_j
(i ≠ j) that no expert learnt.

Semantics (equal expert weights; the configured ``scale`` λ multiplies the result afterwards):

- ``linear``: the mean Σ ΔW_i / n.
- ``task_arithmetic`` and ``concat``: the sum Σ ΔW_i (``concat`` is always factorised exactly,
  as the concatenation [B_1 … B_n]·[A_1; …; A_n]).
- ``magnitude_prune``: keep each ΔW_i's top-``density`` entries by magnitude, then sum.
- ``ties`` (Yadav et al. 2023): trim as above, elect each entry's sign as the sign of the sum
  of the trimmed values, and average the trimmed values that agree with it (disjoint mean).
- ``dare_linear`` / ``dare_ties`` (Yu et al. 2024): drop each entry with probability
  1 − ``density`` and rescale the survivors by 1/``density``; then sum / TIES election.
- ``co_merge``: see :mod:`alignguard.merge.comerge`.

These match peft's ``merge_utils`` functions applied to ΔW (the tests check it), except that
trimming uses a magnitude threshold (ties at the threshold are all kept) instead of a top-k sort,
which is several times faster on 1280×1280 matrices.
"""

from __future__ import annotations

from typing import Literal

import torch

Strategy = Literal[
    "co_merge",
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "concat",
]
STRATEGIES: tuple[str, ...] = Strategy.__args__  # type: ignore[attr-defined]
# Rules whose result is Σ_i diag(w_i)·ΔW_i (row weights), so it factorises exactly at the
# concatenated rank; the rest produce arbitrary matrices that need an SVD.
ROW_WEIGHTED = ("linear", "task_arithmetic", "concat")


def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """``delta`` with all but its top-``density`` share of entries (by |value|) set to 0."""
    if density >= 1:
        return delta
    keep = int(density * delta.numel())
    if keep <= 0:
        return torch.zeros_like(delta)
    magnitude = delta.abs().reshape(-1)
    threshold = magnitude.kthvalue(magnitude.numel() - keep + 1).values
    return torch.where(delta.abs() >= threshold, delta, torch.zeros_like(delta))


def random_drop(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: drop entries with probability 1 − density, rescale the rest by 1/density."""
    if density >= 1:
        return delta
    keep = torch.rand(delta.shape, generator=generator, device=delta.device) < density
    return torch.where(keep, delta / density, torch.zeros_like(delta))


def elect_and_average(stack: torch.Tensor) -> torch.Tensor:
    """TIES sign election (sign of the sum) and disjoint mean of ``stack [n, out, in]``."""
    elected = torch.where(stack.sum(dim=0) >= 0, 1.0, -1.0)
    agree = stack.sign() == elected  # zeros (trimmed or dropped) never agree
    total = torch.where(agree, stack, torch.zeros_like(stack)).sum(dim=0)
    return total / agree.sum(dim=0).clamp(min=1)


def dense_merge(
    stack: torch.Tensor, strategy: str, density: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Merged ΔW ``[out, in]`` of ``stack [n, out, in]`` by a rule other than ``co_merge``."""
    if strategy == "linear":
        return stack.mean(dim=0)
    if strategy in ("task_arithmetic", "concat"):
        return stack.sum(dim=0)
    if strategy in ("magnitude_prune", "ties"):
        trimmed = torch.stack([magnitude_trim(delta, density) for delta in stack])
        return trimmed.sum(dim=0) if strategy == "magnitude_prune" else elect_and_average(trimmed)
    if strategy in ("dare_linear", "dare_ties"):
        if generator is None:
            raise ValueError(f"{strategy} needs a seeded generator")
        dropped = torch.stack([random_drop(delta, density, generator) for delta in stack])
        return dropped.sum(dim=0) if strategy == "dare_linear" else elect_and_average(dropped)
    raise ValueError(f"unknown merge strategy {strategy!r}; expected one of {STRATEGIES}")


def row_weights(strategy: str, n: int, out: int) -> torch.Tensor:
    """``[n, out]`` weights w with merged ΔW = Σ_i diag(w_i)·ΔW_i for a row-weighted rule."""
    if strategy == "linear":
        return torch.full((n, out), 1.0 / n)
    if strategy in ("task_arithmetic", "concat"):
        return torch.ones(n, out)
    raise ValueError(f"{strategy} is not a row-weighted rule")
