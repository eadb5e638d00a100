"""Text-to-image models: loading SD1.5/SD2.1/SDXL/toy through diffusers, tiny test pipelines."""

from alignguard.models.loading import (
    PIPELINE_CLASSES,
    SCHEDULERS,
    ModelLoadError,
    configure_pipeline,
    load_pipeline,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
    set_attention_backend,
)
from alignguard.models.tiny import tiny_sd_pipeline, tiny_sdxl_pipeline, tiny_tokenizer
from alignguard.models.tokenizer import build_word_vocab, words_split, write_word_tokenizer

__all__ = [
    "PIPELINE_CLASSES",
    "SCHEDULERS",
    "ModelLoadError",
    "build_word_vocab",
    "configure_pipeline",
    "load_pipeline",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "set_attention_backend",
    "tiny_sd_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_tokenizer",
    "words_split",
    "write_word_tokenizer",
]
