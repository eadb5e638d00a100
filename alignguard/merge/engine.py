"""The merge engine: per layer, experts' ΔW_i (fp32) → merged ΔW → LoRA factors + diagnostics.

Two exact paths, one layer at a time, on any device:

- **row-weighted rules** (``linear``, ``task_arithmetic``, ``concat``, row-wise ``co_merge``):
  merged ΔW = Σ_i diag(w_i)·ΔW_i is built directly as exact factors at the concatenated rank —
  no dense matrix at all — and truncated by a QR-based SVD when ``rank`` is set;
- **token-wise** ``co_merge``: the ridge least-squares solve of the routed calibration's
  moments (:func:`alignguard.merge.comerge.routed_least_squares`), factorised by SVD;
- **dense rules** (``ties``, ``dare_*``, ``magnitude_prune``, element-wise ``co_merge``): the
  merged ΔW is computed in row blocks (each block's ΔW_i recomputed from the factors, so no
  ``[n, out, in]`` stack is ever held: small temporaries are several times faster on CPU), then
  factorised by SVD (exact at full rank when ``rank`` is null).

``concat`` is always exact. ``scale`` (λ) multiplies every merged ΔW.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import get_args

import torch

from alignguard.config.schema import CoMergeGranularity
from alignguard.merge import comerge
from alignguard.merge.calibration import ActivationStats
from alignguard.merge.diagnostics import LayerDiagnostics, layer_diagnostics, summarize
from alignguard.merge.factorize import Factors, concat_factors, svd_factors, truncate_factors
from alignguard.merge.lora_file import LoraFile, LoraLayer
from alignguard.merge.routing import RoutedStats
from alignguard.merge.strategies import ROW_WEIGHTED, STRATEGIES, merge_block, row_weights, trim_threshold

# Entries per expert per row block: 1 MiB fp32 temporaries on CPU; big blocks on GPU (launch cost).
BLOCK_ELEMENTS = {"cpu": 1 << 18, "cuda": 1 << 24}


GRANULARITIES: tuple[str, ...] = get_args(CoMergeGranularity)
Stats = ActivationStats | RoutedStats


@dataclass(frozen=True)
class MergeOptions:
    strategy: str = "co_merge"
    granularity: str = "element"  # co_merge only: "element", "row" or "token" (the config default)
    rank: int | None = None  # None: exact
    density: float = 0.5  # ties, dare_*, magnitude_prune
    scale: float = 1.0  # λ on the merged ΔW
    svd: str = "exact"  # "exact" or "randomized" (only with a rank)
    seed: int = 0  # DARE's drops, randomized SVD
    ridge: float = 1e-3  # token-wise co_merge: relative ridge of the least-squares solve

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown merge strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {self.granularity!r}")
        if self.ridge <= 0:
            raise ValueError(f"ridge must be > 0, got {self.ridge}")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")

    @property
    def row_weighted(self) -> bool:
        return self.strategy in ROW_WEIGHTED or (self.strategy == "co_merge" and self.granularity == "row")

    @property
    def routed(self) -> bool:
        """Token-wise Co-Merge (needs :class:`RoutedStats`, not :class:`ActivationStats`)."""
        return self.strategy == "co_merge" and self.granularity == "token"

    @property
    def label(self) -> str:
        return f"co_merge_{self.granularity}" if self.strategy == "co_merge" else self.strategy


@dataclass
class MergedDelta:
    """One layer's merged ΔW (λ applied), before the written factorisation: ``dense [out, in]``
    (dense rules) or ``exact`` factors of it (row-weighted rules)."""

    dense: torch.Tensor | None = None
    exact: Factors | None = None
    winners: torch.Tensor | None = None  # row-wise Co-Merge: [out]
    winner_share: list[float] | None = None

    @property
    def delta(self) -> torch.Tensor:
        return self.dense if self.dense is not None else self.exact.up @ self.exact.down  # type: ignore[union-attr]


@dataclass
class LayerMerge:
    merged: MergedDelta
    factors: Factors  # what the file holds: ΔW ≈ up @ down
    diagnostics: LayerDiagnostics

    @property
    def delta(self) -> torch.Tensor:
        """The merged ΔW itself (before factorisation)."""
        return self.merged.delta


@dataclass
class MergeResult:
    experts: list[str]
    options: MergeOptions
    factors: dict[str, Factors] = field(default_factory=dict)
    diagnostics: list[LayerDiagnostics] = field(default_factory=list)

    def summary(self) -> dict:
        return summarize(self.diagnostics, self.experts)

    def file_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module: (up, down)}`` for :func:`alignguard.merge.lora_file.lora_file_bytes`."""
        return {name: (f.up, f.down) for name, f in self.factors.items()}


def stack_deltas(layers: list[LoraLayer | None], device: torch.device | None = None) -> torch.Tensor:
    """ΔW_i of every expert ``[n, out, in]`` fp32; zeros where an expert lacks the layer."""
    return _block([_device_factors(layer, device) for layer in layers], _shape(layers), slice(None), device)


def _shape(layers: list[LoraLayer | None]) -> tuple[int, int]:
    return next(layer for layer in layers if layer is not None).shape


def _device_factors(layer: LoraLayer | None, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    if layer is None:
        return None
    return layer.up.to(device, torch.float32) * layer.scale, layer.down.to(device, torch.float32)


def _block(factors: list, shape: tuple[int, int], rows: slice, device) -> torch.Tensor:
    """ΔW_i[rows] of every expert ``[n, len(rows), in]``."""
    count = len(range(*rows.indices(shape[0])))
    block = torch.empty(len(factors), count, shape[1], device=device)
    for i, pair in enumerate(factors):
        if pair is None:
            block[i].zero_()
        else:
            torch.matmul(pair[0][rows], pair[1], out=block[i])
    return block


def _generator(seed: int, index: int, device: torch.device | None) -> torch.Generator:
    return torch.Generator(device=device or "cpu").manual_seed(seed * 1_000_003 + index)


def _row_weighted(
    name: str, layers: list[LoraLayer | None], options: MergeOptions, stats: Stats | None, device
) -> MergedDelta:
    n, out = len(layers), _shape(layers)[0]
    winners = None
    if options.strategy == "co_merge":
        winners = comerge.row_winners(_stats(stats).output_abs_mean[name].to(device))
        weights = comerge.row_winner_weights(winners, n)
    else:
        weights = row_weights(options.strategy, n, out)
    exact = concat_factors(layers, weights.to(device) * options.scale, device)
    share = comerge.winner_share(winners, n) if winners is not None else None
    return MergedDelta(exact=exact, winners=winners, winner_share=share)


def _dense(
    name: str,
    layers: list[LoraLayer | None],
    options: MergeOptions,
    stats: Stats | None,
    index: int,
    device,
) -> MergedDelta:
    shape, n = _shape(layers), len(layers)
    factors = [_device_factors(layer, device) for layer in layers]
    thresholds = None
    if options.strategy in ("ties", "magnitude_prune"):  # whole-matrix thresholds, one ΔW_i at a time
        thresholds = torch.tensor(
            [0.0 if f is None else trim_threshold(f[0] @ f[1], options.density) for f in factors]
        )
    generator = _generator(options.seed, index, device)
    co_merge = options.strategy == "co_merge"
    input_abs_mean = _stats(stats).input_abs_mean[name].to(device) if co_merge else None
    merged = torch.empty(shape, device=device)
    counts = torch.zeros(n, dtype=torch.long, device=device)
    step = max(
        1, BLOCK_ELEMENTS["cuda" if torch.device(device or "cpu").type == "cuda" else "cpu"] // shape[1]
    )
    for start in range(0, shape[0], step):
        rows = slice(start, min(start + step, shape[0]))
        block = _block(factors, shape, rows, device)
        if co_merge:
            merged[rows], winners = comerge.select_most_active(block, input_abs_mean)
            counts += torch.bincount(winners.reshape(-1).long(), minlength=n)
        else:
            merged[rows] = merge_block(block, options.strategy, options.density, thresholds, generator)
    if options.scale != 1.0:
        merged *= options.scale
    share = (counts.double() / counts.sum()).tolist() if co_merge else None
    return MergedDelta(dense=merged, winner_share=share)


def _stats(stats: Stats | None) -> ActivationStats:
    if not isinstance(stats, ActivationStats):
        raise ValueError("element- and row-wise co_merge need calibration statistics (ActivationStats)")
    return stats


def _routed(name: str, options: MergeOptions, stats: Stats | None, device) -> MergedDelta:
    if not isinstance(stats, RoutedStats):
        raise ValueError("token-wise co_merge needs routed calibration statistics (RoutedStats)")
    layer = stats.layers[name]
    merged = comerge.routed_least_squares(layer.cross.to(device), layer.gram.to(device), options.ridge)
    if options.scale != 1.0:
        merged *= options.scale
    return MergedDelta(dense=merged, winner_share=layer.routed_share)


def merge_delta(
    name: str,
    layers: list[LoraLayer | None],
    options: MergeOptions,
    stats: Stats | None = None,
    index: int = 0,
    device: torch.device | None = None,
) -> MergedDelta:
    """The merged ΔW of one layer (``None`` in ``layers``: that expert has no LoRA here);
    ``index`` seeds the layer's DARE drops."""
    if options.row_weighted:
        return _row_weighted(name, layers, options, stats, device)
    if options.routed:
        return _routed(name, options, stats, device)
    return _dense(name, layers, options, stats, index, device)


def factorize(merged: MergedDelta, options: MergeOptions, index: int = 0) -> Factors:
    """The factors written to the file (see :mod:`alignguard.merge.factorize`)."""
    if merged.exact is not None:
        if options.rank is None or options.strategy == "concat":
            return merged.exact
        return truncate_factors(merged.exact, options.rank)
    return svd_factors(merged.dense, options.rank, options.svd, options.seed + index)[0]  # type: ignore[arg-type]


def merge_layer(
    name: str,
    layers: list[LoraLayer | None],
    options: MergeOptions,
    stats: Stats | None = None,
    index: int = 0,
    device: torch.device | None = None,
) -> LayerMerge:
    """Merge, factorise and diagnose one layer."""
    merged = merge_delta(name, layers, options, stats, index, device)
    factors = factorize(merged, options, index)
    target = merged.dense if merged.dense is not None else (merged.exact.up, merged.exact.down)  # type: ignore[union-attr]
    diagnostics = layer_diagnostics(
        name, layers, target, factors.rank, factors.energy_kept, merged.winner_share
    )
    return LayerMerge(merged=merged, factors=factors, diagnostics=diagnostics)


def merge_experts(
    experts: Mapping[str, LoraFile],
    options: MergeOptions,
    stats: Stats | None = None,
    device: torch.device | str | None = None,
    on_layer: Callable[[str], None] | None = None,
) -> MergeResult:
    """Merge every layer any expert has; factors are moved to the CPU as they are produced."""
    if not experts:
        raise ValueError("no experts to merge")
    if stats is not None and list(stats.experts) != list(experts):
        raise ValueError(f"calibration statistics are for {stats.experts}, not {list(experts)}")
    device = torch.device(device) if device is not None else None
    result = MergeResult(experts=list(experts), options=options)
    names = sorted({name for expert in experts.values() for name in expert.layers})
    for index, name in enumerate(names):
        layers = [expert.layers.get(name) for expert in experts.values()]
        merged = merge_layer(name, layers, options, stats, index, device)
        result.factors[name] = Factors(
            merged.factors.up.cpu(), merged.factors.down.cpu(), merged.factors.energy_kept
        )
        result.diagnostics.append(merged.diagnostics)
        if on_layer is not None:
            on_layer(name)
    return result
