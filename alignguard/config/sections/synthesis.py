"""``synthesis``: rendering both images of every pair, and the prompt-writing LLM (``synthesis.llm``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alignguard.config.sections.base import (
    InputPath,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Section,
)


class LLMSection(Section):
    """Prompt-writing LLM for data.source = 'llm' (a local path or hub id of a chat model)."""

    path: InputPath | None = Field(
        None, description="chat model (local path or hub id) that writes the pairs; required for source 'llm'"
    )
    concepts: str | None = Field(
        None, description="YAML of category -> concepts; default: the built-in starter list"
    )
    prompts_per_concept: PositiveInt = Field(8, description="pairs requested for every concept")
    batch_size: PositiveInt = Field(8, description="pair requests per Ray Data batch, generated together")
    max_new_tokens: PositiveInt = Field(
        256, description="token budget of each generated prompt; one not closed within it is malformed"
    )
    temperature: PositiveFloat = Field(0.8, description="sampling temperature of the LLM")
    max_retries: NonNegativeInt = Field(
        2, description="further attempts for a request whose output did not parse; then it is dropped"
    )
    max_prompt_words: PositiveInt = Field(
        60, description="pairs with a prompt longer than this many words are dropped (filtered)"
    )


class SynthesisSection(Section):
    """Rendering both images of every pair with the model to be aligned (same seed).

    ``batch_size`` is pairs per shard: the unit of work, of retry and of atomic output (a killed
    worker costs at most its in-flight shard)."""

    pairs_per_concept: PositiveInt = Field(
        16, description="toy-world pairs generated per concept (data.source 'toyworld' only)"
    )
    steps: PositiveInt = Field(20, description="denoising steps per image")
    guidance: NonNegativeFloat = Field(5.0, description="classifier-free guidance scale")
    batch_size: PositiveInt = Field(
        16, description="pairs per shard: the unit of work, retry and atomic output"
    )
    image_format: Literal["png", "jpeg", "webp"] = Field("png", description="encoding of the stored images")
    cache_latents: bool = Field(
        True,
        description="also store VAE latents and text embeddings of every image (the training cache; "
        "training and merge.refine need it)",
    )
    cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="dtype of the training cache (float16 halves its size)"
    )
    max_failed_shards: NonNegativeInt = Field(
        0,
        description="shards that may fail before the stage aborts; failed ones are left for a rerun of "
        "the same command, which renders only those",
    )
    writers: PositiveInt = Field(
        1, description="writer actors (image encoding + storage), off the render path"
    )
    writer_cpus: PositiveFloat = Field(0.25, description="CPUs reserved per writer actor")
    llm: LLMSection = Field(LLMSection(), description="the prompt-writing LLM (data.source 'llm')")
