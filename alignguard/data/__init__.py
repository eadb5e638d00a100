"""Prompt data: the 7-category taxonomy, CoProV2 pairs, evaluation prompt sets, checks."""

from alignguard.data.checks import DedupResult, dedup_pairs, leaked_prompts, normalize_prompt, split_pairs
from alignguard.data.coprov2 import (
    category_counts,
    coprov2_pair_id,
    coprov2_stats,
    read_coprov2,
    write_coprov2,
)
from alignguard.data.prompt_sets import read_prompt_set
from alignguard.data.schema import DataFormatError, PromptPair, PromptRecord
from alignguard.data.taxonomy import CATEGORIES, TAXONOMY, Category, UnknownCategoryError, normalize_category

__all__ = [
    "CATEGORIES",
    "TAXONOMY",
    "Category",
    "DataFormatError",
    "DedupResult",
    "PromptPair",
    "PromptRecord",
    "UnknownCategoryError",
    "category_counts",
    "coprov2_pair_id",
    "coprov2_stats",
    "dedup_pairs",
    "leaked_prompts",
    "normalize_category",
    "normalize_prompt",
    "read_coprov2",
    "read_prompt_set",
    "split_pairs",
    "write_coprov2",
]
