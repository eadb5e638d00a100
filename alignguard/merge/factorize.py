"""Turning a merged ΔW back into LoRA factors (up ``[out, k]``, down ``[k, in]``, ΔW ≈ up @ down).

- Row-weighted merges (Σ_i diag(w_i)·ΔW_i) factorise **exactly** at the concatenated rank
  Σ r_i: up = [diag(w_1)·s_1·B_1 | … | diag(w_n)·s_n·B_n], down = [A_1; …; A_n].
- Any merged ΔW factorises by SVD: ΔW = U·S·Vᵀ, up = U_k·√S_k, down = √S_k·V_kᵀ. With no rank
  asked, every singular value above numerical noise is kept (exact, up to min(out, in)).
- Truncating an exact low-rank factorisation to rank k needs no dense SVD: with up = Q_u·R_u and
  downᵀ = Q_d·R_d (thin QR), up @ down = Q_u·(R_u·R_dᵀ)·Q_dᵀ and only the small core is
  decomposed — O((out + in)·R²) instead of O(out·in·min(out, in)).

Every path reports the energy kept, ‖ΔW_k‖²_F / ‖ΔW‖²_F (1.0 when exact).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignguard.merge.lora_file import LoraLayer


@dataclass(frozen=True)
class Factors:
    up: torch.Tensor  # [out, k]
    down: torch.Tensor  # [k, in]
    energy_kept: float  # ‖up @ down‖² / ‖ΔW‖² (1.0 when exact)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


def concat_factors(layers: Sequence[LoraLayer | None], weights: torch.Tensor, device=None) -> Factors:
    """Exact factors of Σ_i diag(weights[i])·ΔW_i; ``weights [n, out]``; ``None`` layers are absent
    experts. Experts whose row weights are all zero are left out (they add nothing)."""
    ups, downs = [], []
    for layer, w in zip(layers, weights, strict=True):
        if layer is None or not bool(w.any()):
            continue
        up = layer.up.to(device=device, dtype=torch.float32) * layer.scale
        ups.append(up * w.to(up)[:, None])
        downs.append(layer.down.to(device=device, dtype=torch.float32))
    if not ups:  # nothing to keep: a rank-1 zero adapter keeps the file loadable
        present = next(layer for layer in layers if layer is not None)
        out, inp = present.shape
        return Factors(torch.zeros(out, 1, device=device), torch.zeros(1, inp, device=device), 1.0)
    return Factors(torch.cat(ups, dim=1), torch.cat(downs, dim=0), 1.0)


def _split(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def _kept_rank(s: torch.Tensor, rank: int | None, shape: tuple[int, int]) -> int:
    """``rank`` capped by what exists; with None, every singular value above fp32 noise."""
    if rank is not None:
        return max(1, min(rank, int(s.numel())))
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 1
    tolerance = float(s[0]) * max(shape) * torch.finfo(torch.float32).eps
    return max(1, int((s > tolerance).sum()))


def _energy(s: torch.Tensor, rank: int, total: float) -> float:
    return 1.0 if total == 0.0 else float((s[:rank].double() ** 2).sum() / total)


def truncate_factors(factors: Factors, rank: int) -> Factors:
    """Best rank-``rank`` approximation of up @ down, via QR of the factors (no dense SVD)."""
    if rank >= factors.rank:
        return factors
    q_up, r_up = torch.linalg.qr(factors.up)
    q_down, r_down = torch.linalg.qr(factors.down.T)
    u, s, vh = torch.linalg.svd(r_up @ r_down.T)
    up, down = _split(q_up @ u, s, vh @ q_down.T, rank)
    return Factors(up, down, _energy(s, rank, float((s.double() ** 2).sum())))


def svd_factors(
    delta: torch.Tensor, rank: int | None, method: str = "exact", seed: int = 0
) -> tuple[Factors, torch.Tensor]:
    """Factors of ``delta [out, in]`` at ``rank`` (None: exact) and the singular values found.

    ``method``: ``exact`` (``torch.linalg.svd``) or ``randomized`` (``torch.svd_lowrank``,
    4 power iterations, seeded; much faster for small ranks, near-exact for decaying spectra)."""
    total = float((delta.double() ** 2).sum())
    if method == "randomized" and rank is not None and rank + 8 < min(delta.shape):
        with torch.random.fork_rng(devices=[delta.device] if delta.is_cuda else []):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(delta, q=rank + 8, niter=4)
        vh = v.T
    elif method in ("exact", "randomized"):
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    else:
        raise ValueError(f"unknown SVD method {method!r}; expected 'exact' or 'randomized'")
    kept = _kept_rank(s, rank, tuple(delta.shape))
    up, down = _split(u, s, vh, kept)
    return Factors(up, down, _energy(s, kept, total)), s
