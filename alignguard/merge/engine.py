"""The merge engine: per layer, experts' ΔW_i (fp32) → merged ΔW → LoRA factors + diagnostics.

One layer at a time (peak memory: n dense ``[out, in]`` matrices), on any device. Row-weighted
results (``linear``, ``task_arithmetic``, ``concat``, row-wise ``co_merge``) are factorised
exactly at the concatenated rank, or truncated by a QR-based SVD when a rank is asked; other
results by an SVD of the dense merged ΔW (exact at full rank when no rank is asked).
``concat`` is always exact. ``scale`` (λ) multiplies every merged ΔW.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from alignguard.merge import comerge
from alignguard.merge.calibration import ActivationStats
from alignguard.merge.diagnostics import LayerDiagnostics, layer_diagnostics, summarize
from alignguard.merge.factorize import Factors, concat_factors, svd_factors, truncate_factors
from alignguard.merge.lora_file import LoraFile, LoraLayer
from alignguard.merge.strategies import ROW_WEIGHTED, STRATEGIES, dense_merge, row_weights


@dataclass(frozen=True)
class MergeOptions:
    strategy: str = "co_merge"
    granularity: str = "element"  # co_merge only: "element" or "row"
    rank: int | None = None  # None: exact
    density: float = 0.5  # ties, dare_*, magnitude_prune
    scale: float = 1.0  # λ on the merged ΔW
    svd: str = "exact"  # "exact" or "randomized" (only with a rank)
    seed: int = 0  # DARE's drops, randomized SVD

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown merge strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.granularity not in ("element", "row"):
            raise ValueError(f"granularity must be 'element' or 'row', got {self.granularity!r}")
        if not 0 < self.density <= 1:
            raise ValueError(f"density must be in (0, 1], got {self.density}")

    @property
    def row_weighted(self) -> bool:
        return self.strategy in ROW_WEIGHTED or (self.strategy == "co_merge" and self.granularity == "row")

    @property
    def label(self) -> str:
        return f"co_merge_{self.granularity}" if self.strategy == "co_merge" else self.strategy


@dataclass
class LayerMerge:
    """One merged layer: the merged ΔW (before factorisation), its factors, Co-Merge winners."""

    delta: torch.Tensor  # [out, in]
    factors: Factors
    winners: torch.Tensor | None
    diagnostics: LayerDiagnostics


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
    shape = next(layer for layer in layers if layer is not None).shape
    zeros = torch.zeros(shape, device=device)
    return torch.stack([zeros if layer is None else layer.delta(device) for layer in layers])


def _generator(seed: int, index: int, device: torch.device | None) -> torch.Generator:
    return torch.Generator(device=device or "cpu").manual_seed(seed * 1_000_003 + index)


def merged_delta(
    name: str,
    stack: torch.Tensor,
    options: MergeOptions,
    stats: ActivationStats | None = None,
    index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(merged ΔW before λ, Co-Merge winners, row weights when row-weighted) of one layer.

    ``stack [n, out, in]``; ``index`` seeds the layer's DARE drops."""
    n, out, _ = stack.shape
    if options.strategy == "co_merge":
        if stats is None:
            raise ValueError("co_merge needs calibration statistics (ActivationStats)")
        if options.granularity == "row":
            winners = comerge.row_winners(stats.output_abs_mean[name].to(stack.device))
            weights = comerge.row_winner_weights(winners, n).to(stack.device)
        else:
            winners = comerge.element_winners(stack, stats.input_abs_mean[name].to(stack.device))
            weights = None
        return comerge.select(stack, winners), winners, weights
    if options.row_weighted:
        weights = row_weights(options.strategy, n, out).to(stack.device)
        return (weights[:, :, None] * stack).sum(dim=0), None, weights
    generator = _generator(options.seed, index, stack.device)
    return dense_merge(stack, options.strategy, options.density, generator), None, None


def merge_layer(
    name: str,
    layers: list[LoraLayer | None],
    options: MergeOptions,
    stats: ActivationStats | None = None,
    index: int = 0,
    device: torch.device | None = None,
) -> LayerMerge:
    """Merge one layer of n experts (``None``: the expert has no LoRA on this layer)."""
    stack = stack_deltas(layers, device)
    delta, winners, weights = merged_delta(name, stack, options, stats, index)
    delta = delta * options.scale
    if weights is not None:  # row-weighted: exact at the concatenated rank, no dense SVD
        factors = concat_factors(layers, weights * options.scale, device)
        if options.rank is not None and options.strategy != "concat":
            factors = truncate_factors(factors, options.rank)
    else:
        factors, _ = svd_factors(delta, options.rank, options.svd, options.seed + index)
    share = comerge.winner_share(winners, len(layers)) if winners is not None else None
    diagnostics = layer_diagnostics(name, stack, delta, factors.rank, factors.energy_kept, share)
    return LayerMerge(delta=delta, factors=factors, winners=winners, diagnostics=diagnostics)


def merge_experts(
    experts: Mapping[str, LoraFile],
    options: MergeOptions,
    stats: ActivationStats | None = None,
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
