"""Per-layer merge diagnostics: what each expert brings and what the merge keeps of it.

- ``sign_conflict``: share of positions where the experts' non-zero updates disagree in sign
  (some positive, some negative) — the interference TIES' sign election targets.
- ``pairwise_sign_conflict``: over expert pairs, the mean share of positions where the two
  have opposite signs (0.5 for independent random experts, whatever their number).
  Both are counted on at most :data:`SIGN_SAMPLE` positions per layer (a fixed-seed sample; all
  positions of smaller layers): they describe the experts, and ±1 % is plenty for that.
- ``expert_norms`` / ``merged_norm``: ‖ΔW_i‖_F and ‖merged ΔW‖_F (before factorisation).
- ``retention``: ⟨merged, ΔW_i⟩ / ‖ΔW_i‖², how much of expert i's direction the merge keeps
  (1.0 for the sum of orthogonal experts, 1/n for their mean).
- ``winner_share`` (Co-Merge): the share of positions (or rows) each expert won.
- ``energy_kept`` / ``rank``: of the factorisation written to the file.

Norms and inner products are computed from the LoRA factors (r×r Gram matrices), never from
dense products, so diagnostics cost next to nothing even on SDXL-size layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from alignguard.merge.lora_file import LoraLayer

SIGN_SAMPLE = 1 << 14


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


def _factors(layer: LoraLayer, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(s·B, A) in float64: ΔW = (s·B) @ A."""
    return (layer.up.to(device, torch.float64) * layer.scale, layer.down.to(device, torch.float64))


def factored_inner(up1: torch.Tensor, down1: torch.Tensor, up2: torch.Tensor, down2: torch.Tensor) -> float:
    """⟨up1 @ down1, up2 @ down2⟩_F = Σ (up1ᵀ up2) ∘ (down1 down2ᵀ), without forming either product."""
    return float(((up1.T @ up2) * (down1 @ down2.T)).sum())


def sign_conflicts(stack: torch.Tensor) -> tuple[float, float]:
    """(any-conflict share, mean pairwise opposite-sign share) of ``stack [n, ...]`` over positions."""
    n = stack.shape[0]
    positive = (stack > 0).sum(dim=0, dtype=torch.float32)
    negative = (stack < 0).sum(dim=0, dtype=torch.float32)
    any_conflict = float(((positive > 0) & (negative > 0)).float().mean())
    pairs = n * (n - 1) / 2
    pairwise = float((positive * negative).mean() / pairs) if pairs else 0.0
    return any_conflict, pairwise


def sampled_entries(
    layers: Sequence[LoraLayer | None], shape: tuple[int, int], device=None, sample: int = SIGN_SAMPLE
) -> torch.Tensor:
    """ΔW_i at up to ``sample`` positions ``[n, S]`` (all positions when the layer is smaller)."""
    out, inp = shape
    if out * inp <= sample:
        flat = torch.arange(out * inp, device=device)
    else:
        generator = torch.Generator().manual_seed(out * 7919 + inp)
        flat = torch.randint(out * inp, (sample,), generator=generator).to(device)
    rows, cols = flat // inp, flat % inp
    entries = []
    for layer in layers:
        if layer is None:
            entries.append(torch.zeros(flat.numel(), device=device))
            continue
        up = layer.up.to(device, torch.float32) * layer.scale
        entries.append((up[rows] * layer.down.to(device, torch.float32)[:, cols].T).sum(dim=1))
    return torch.stack(entries)


def layer_diagnostics(
    name: str,
    layers: Sequence[LoraLayer | None],
    merged: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
    rank: int,
    energy_kept: float,
    winner_share: list[float] | None = None,
) -> LayerDiagnostics:
    """Diagnostics of one layer; ``merged`` is the dense merged ΔW ``[out, in]`` or exact factors
    ``(up [out, R], down [R, in])`` of it."""
    present = next(layer for layer in layers if layer is not None)
    device = (merged if isinstance(merged, torch.Tensor) else merged[0]).device
    norms, retention = [], []
    for layer in layers:
        if layer is None:
            norms.append(0.0)
            retention.append(0.0)
            continue
        up, down = _factors(layer, device)
        squared = factored_inner(up, down, up, down)
        if isinstance(merged, torch.Tensor):  # ⟨M, s·B·A⟩ = Σ (M Aᵀ) ∘ (s·B)
            inner = float(((merged @ down.T.to(merged.dtype)).double() * up).sum())
        else:
            inner = factored_inner(merged[0].double(), merged[1].double(), up, down)
        norms.append(squared**0.5)
        retention.append(inner / squared if squared > 0 else 0.0)
    if isinstance(merged, torch.Tensor):
        merged_norm = float(torch.linalg.vector_norm(merged, dtype=torch.float64))
    else:
        m_up, m_down = merged[0].double(), merged[1].double()
        merged_norm = max(factored_inner(m_up, m_down, m_up, m_down), 0.0) ** 0.5
    any_conflict, pairwise = sign_conflicts(sampled_entries(layers, present.shape, device))
    return LayerDiagnostics(
        name=name,
        shape=present.shape,
        rank=rank,
        energy_kept=energy_kept,
        sign_conflict=any_conflict,
        pairwise_sign_conflict=pairwise,
        expert_norms=norms,
        merged_norm=merged_norm,
        retention=retention,
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
