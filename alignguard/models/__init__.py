"""Text-to-image models: the diffusers loading mechanics, tiny test pipelines, word tokenizers.

Which model ``model.family`` names and how to load it: :mod:`alignguard.families`."""

from alignguard.models.loading import (
    SCHEDULERS,
    ModelLoadError,
    configure_pipeline,
    load_diffusers_pipeline,
    resolve_device,
    resolve_dtype,
    set_attention_backend,
)
from alignguard.models.tiny import tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_tokenizer
from alignguard.models.tokenizer import build_word_vocab, words_split, write_word_tokenizer

__all__ = [
    "SCHEDULERS",
    "ModelLoadError",
    "build_word_vocab",
    "configure_pipeline",
    "load_diffusers_pipeline",
    "resolve_device",
    "resolve_dtype",
    "set_attention_backend",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_tokenizer",
    "words_split",
    "write_word_tokenizer",
]
