from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

from alignguard.config.schema import ModelSection
from alignguard.families import load_pipeline
from alignguard.models import (
    ModelLoadError,
    resolve_dtype,
    tiny_sd_pipeline,
    tiny_sdxl_pipeline,
    tiny_tokenizer,
    words_split,
)
from alignguard.models.tiny import TINY_WORDS


def generate(pipe, prompt="a red cat", seed=0, steps=2):
    generator = torch.Generator().manual_seed(seed)
    return pipe(
        prompt, num_inference_steps=steps, generator=generator, height=32, width=32, output_type="np"
    ).images


def test_tokenizer_encodes_listed_words_as_single_tokens(tmp_path):
    tokenizer = tiny_tokenizer(tmp_path)
    assert words_split(tokenizer, TINY_WORDS) == []
    ids = tokenizer("a red zebra", padding="max_length", truncation=True).input_ids
    assert len(ids) == tokenizer.model_max_length
    assert ids[0] == tokenizer.bos_token_id
    assert len(tokenizer("zebra", add_special_tokens=False).input_ids) > 1  # unknown word: characters


def test_tiny_sd_is_seeded_and_deterministic():
    pipe_a, pipe_b = tiny_sd_pipeline(seed=0), tiny_sd_pipeline(seed=0)
    assert isinstance(pipe_a, StableDiffusionPipeline)
    assert all(
        torch.equal(a, b) for a, b in zip(pipe_a.unet.parameters(), pipe_b.unet.parameters(), strict=True)
    )
    image = generate(pipe_a)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    np.testing.assert_array_equal(image, generate(pipe_b))
    assert not np.array_equal(image, generate(pipe_a, seed=1))
    assert pipe_a.tokenizer.model_max_length <= pipe_a.text_encoder.config.max_position_embeddings


def test_tiny_sdxl_has_two_encoders_pooled_embeddings_and_time_ids():
    pipe = tiny_sdxl_pipeline()
    assert isinstance(pipe, StableDiffusionXLPipeline)
    embeds, _, pooled, _ = pipe.encode_prompt("a red cat", device="cpu")
    assert embeds.shape[-1] == pipe.unet.config.cross_attention_dim == 64  # both encoders concatenated
    assert pooled.shape == (1, pipe.text_encoder_2.config.projection_dim)
    assert pipe.unet.config.addition_embed_type == "text_time"
    image = generate(pipe)
    assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()


@pytest.mark.parametrize(("family", "builder"), [("sd15", tiny_sd_pipeline), ("sdxl", tiny_sdxl_pipeline)])
def test_load_pipeline_from_a_local_directory(tmp_path, family, builder):
    original = builder(seed=0)
    original.save_pretrained(tmp_path)
    spec = ModelSection(family=family, path=str(tmp_path), device="cpu", attention="eager")
    pipe = load_pipeline(spec)
    assert all(isinstance(p, AttnProcessor) for p in pipe.unet.attn_processors.values())
    assert pipe.unet.dtype == torch.float32
    # Same weights, same scheduler, same seed: the same image as the in-memory original.
    np.testing.assert_allclose(generate(pipe), generate(original), atol=1e-5)
    other = load_pipeline(spec.model_copy(update={"attention": "sdpa", "scheduler": "dpm++"}))
    assert isinstance(other.scheduler, DPMSolverMultistepScheduler)
    assert all(isinstance(p, AttnProcessor2_0) for p in other.unet.attn_processors.values())


def test_load_pipeline_errors_name_the_path(tmp_path):
    with pytest.raises(ModelLoadError, match=r"model\.path="):
        load_pipeline(ModelSection(family="sd15", path=str(tmp_path / "missing"), device="cpu"))


def test_dtype_resolution():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
