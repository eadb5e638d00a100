"""Tiny random-weight SD- and SDXL-style pipelines for unit tests (built in well under 2 s).

They have the real diffusers classes and the real component layout (SDXL: two text encoders,
pooled embeddings, time ids), only with a handful of channels, so every code path that runs
on SD1.5 or SDXL runs on them. Weights are seeded: the same seed builds the same model.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from alignguard.models.tokenizer import write_word_tokenizer

TINY_WORDS: tuple[str, ...] = (
    *("a", "an", "the", "of", "on", "in", "with", "and", "at", "photo", "painting", "portrait", "drawing"),
    *("red", "green", "blue", "black", "white", "cat", "dog", "man", "woman", "person", "house", "car"),
    *("tree", "street", "city", "knife", "gun", "blood", "fight", "weapon", "flower", "garden", "sky"),
    *("sea", "mountain", "smile", "happy", "sad", "angry", "night", "day"),
)
TINY_MAX_LENGTH = 16
TINY_HIDDEN = 32


def tiny_tokenizer(directory: str | Path | None = None) -> CLIPTokenizer:
    """A word-level CLIP tokenizer over :data:`TINY_WORDS`, written to ``directory`` (by default a
    temporary one, removed once the tokenizer has read its files: it keeps them in memory)."""
    if directory is None:
        with tempfile.TemporaryDirectory(prefix="alignguard-tiny-tokenizer-") as scratch:
            return write_word_tokenizer(TINY_WORDS, scratch, max_length=TINY_MAX_LENGTH)
    return write_word_tokenizer(TINY_WORDS, directory, max_length=TINY_MAX_LENGTH)


def _text_config(tokenizer: CLIPTokenizer, projection_dim: int = TINY_HIDDEN) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TINY_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TINY_MAX_LENGTH,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )


def tiny_sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """An SD1.5-layout pipeline: 32 px images, 16 px latents, one cross-attention level."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TINY_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)).eval(),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    """An SDXL-layout pipeline: two text encoders (the second with a projection giving the pooled
    embedding), ``text_time`` added conditioning with 6 time ids, 32 px images."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    time_embed_dim = 8
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2 * TINY_HIDDEN,  # both encoders' hidden states, concatenated
        attention_head_dim=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=6 * time_embed_dim + TINY_HIDDEN,
        norm_num_groups=8,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        timestep_spacing="leading",
        steps_offset=1,
    )
    return StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=CLIPTextModel(_text_config(tokenizer)).eval(),
        text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer)).eval(),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )


CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_causal_lm(directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny random-weight causal LM (Llama layout) with a chat template into ``directory``.

    Its word-level tokenizer knows :data:`TINY_WORDS` and JSON punctuation only, so a random model
    emits a closing quote often enough to exercise both the parse path and the malformed path.
    Loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` like any local LLM.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory = Path(directory)
    specials = ["<|pad|>", "<|eos|>", "<|unk|>", "<|system|>", "<|user|>", "<|assistant|>"]
    words = [*specials, *TINY_WORDS, '"', "{", "}", ":", ",", "unsafe", "safe"]
    backend = Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(dict.fromkeys(words))}, unk_token="<|unk|>")
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<|pad|>", eos_token="<|eos|>", unk_token="<|unk|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[3:]})
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
