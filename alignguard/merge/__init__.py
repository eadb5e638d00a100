"""Merging LoRA experts exactly: Co-Merge, baselines, diagnostics, diffusers-format LoRA files.

Every rule acts on each layer's full update ΔW_i = (α/r)·B_i·A_i in fp32 (never on A and B
separately), and the merged ΔW is re-factorised exactly (concatenated rank, or full-rank SVD)
or by truncated SVD to a chosen rank, reporting the energy kept. See :mod:`.engine`,
:mod:`.comerge` (our reading of the paper's Co-Merge), :mod:`.strategies` (the baselines),
:mod:`.calibration` and :mod:`.routing` (what the experts do to each layer's inputs), :mod:`.refine`
(distilling the experts into the merged LoRA end to end), :mod:`.preflight` (the checks that refuse a
merge before any work) and :mod:`.stage` (the run-directory stage the merge actor runs).
"""

from alignguard.merge.calibration import (
    ActivationStats,
    CalibrationData,
    LayerMismatchError,
    collect_activation_stats,
)
from alignguard.merge.engine import (
    MergedDelta,
    MergeOptions,
    MergeResult,
    factorize,
    merge_delta,
    merge_experts,
    merge_layer,
)
from alignguard.merge.factorize import Factors, concat_factors, svd_factors, truncate_factors
from alignguard.merge.lora_file import LoraFile, LoraFormatError, LoraLayer, lora_file_bytes, read_lora_bytes
from alignguard.merge.routing import RoutedLayer, RoutedStats, collect_routed_stats
from alignguard.merge.strategies import ROW_WEIGHTED, STRATEGIES

__all__ = [
    "ROW_WEIGHTED",
    "STRATEGIES",
    "ActivationStats",
    "CalibrationData",
    "Factors",
    "LayerMismatchError",
    "LoraFile",
    "LoraFormatError",
    "LoraLayer",
    "MergeOptions",
    "MergeResult",
    "MergedDelta",
    "RoutedLayer",
    "RoutedStats",
    "collect_activation_stats",
    "collect_routed_stats",
    "concat_factors",
    "factorize",
    "lora_file_bytes",
    "merge_delta",
    "merge_experts",
    "merge_layer",
    "read_lora_bytes",
    "svd_factors",
    "truncate_factors",
]
