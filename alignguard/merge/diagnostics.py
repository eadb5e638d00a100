"""Per-layer merge diagnostics: what each expert brings and what the merge keeps of it.

- ``sign_conflict``: share of positions where the experts' non-zero updates disagree in sign
  (some positive, some negative) — the interference TIES' sign election targets.
- ``pairwise_sign_conflict``: over expert pairs, the mean share of positions where the two
  have opposite signs (0.5 for independent random experts, whatever their number).
- ``expert_norms`` / ``merged_norm``: ‖ΔW_i‖_F and ‖merged ΔW‖_F (before factorisation).
- ``retention``: ⟨merged, ΔW_i⟩ / ‖ΔW_i‖², how much of expert i's direction the merge keeps
  (1.0 for the sum of orthogonal experts, 1/n for their mean).
- ``winner_share`` (Co-Merge): the share of positions (or rows) each expert won.
- ``energy_kept`` / ``rank``: of the factorisation written to the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class LayerDiagnostics:
    name: str
    shape: tuple[int, int]
    rank: int
    energy_kept: float
    sign_conflict: float
    pairwise_sign_conflict: float
    expert_norms: list[float]
    merged_norm: float
    retention: list[float]
    winner_share: list[float] | None = None

    def to_json(self) -> dict:
        return asdict(self)


def sign_conflicts(stack: torch.Tensor) -> tuple[float, float]:
    """(any-conflict share, mean pairwise opposite-sign share) of ``stack [n, out, in]``."""
    n = stack.shape[0]
    positive = (stack > 0).sum(dim=0, dtype=torch.float32)
    negative = (stack < 0).sum(dim=0, dtype=torch.float32)
    any_conflict = float(((positive > 0) & (negative > 0)).float().mean())
    pairs = n * (n - 1) / 2
    pairwise = float((positive * negative).mean() / pairs) if pairs else 0.0
    return any_conflict, pairwise


def layer_diagnostics(
    name: str,
    stack: torch.Tensor,
    merged: torch.Tensor,
    rank: int,
    energy_kept: float,
    winner_share: list[float] | None = None,
) -> LayerDiagnostics:
    """Diagnostics of one layer: ``stack [n, out, in]`` the experts' ΔW, ``merged [out, in]``."""
    flat = stack.reshape(stack.shape[0], -1).double()
    merged_flat = merged.reshape(-1).double()
    squared = (flat**2).sum(dim=1)
    retention = torch.where(squared > 0, flat @ merged_flat / squared.clamp(min=1e-300), 0.0)
    any_conflict, pairwise = sign_conflicts(stack)
    return LayerDiagnostics(
        name=name,
        shape=(int(merged.shape[0]), int(merged.shape[1])),
        rank=rank,
        energy_kept=energy_kept,
        sign_conflict=any_conflict,
        pairwise_sign_conflict=pairwise,
        expert_norms=squared.sqrt().tolist(),
        merged_norm=float(merged_flat.norm()),
        retention=retention.tolist(),
        winner_share=winner_share,
    )


def summarize(layers: list[LayerDiagnostics], experts: list[str]) -> dict:
    """Whole-model figures: means over layers, energy kept weighted by each layer's ‖ΔW‖²."""
    if not layers:
        return {}
    weights = torch.tensor([d.merged_norm**2 for d in layers], dtype=torch.float64)
    energy = torch.tensor([d.energy_kept for d in layers], dtype=torch.float64)
    total = float(weights.sum())
    summary = {
        "layers": len(layers),
        "max_rank": max(d.rank for d in layers),
        "mean_rank": sum(d.rank for d in layers) / len(layers),
        "energy_kept": float((weights * energy).sum() / total) if total else 1.0,
        "min_energy_kept": float(energy.min()),
        "mean_sign_conflict": sum(d.sign_conflict for d in layers) / len(layers),
        "mean_pairwise_sign_conflict": sum(d.pairwise_sign_conflict for d in layers) / len(layers),
        "mean_retention": {
            e: sum(d.retention[i] for d in layers) / len(layers) for i, e in enumerate(experts)
        },
    }
    if layers[0].winner_share is not None:
        summary["mean_winner_share"] = {
            e: sum(d.winner_share[i] for d in layers) / len(layers)  # type: ignore[index]
            for i, e in enumerate(experts)
        }
    return summary
