"""merge.refine: distilling the experts into the merged LoRA (tiny random models built in code)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from merge_support import linear_layer_shapes, random_lora

from alignguard.merge.lora_file import lora_file_bytes
from alignguard.merge.refine import (
    RefineOptions,
    expert_factors,
    low_rank_hooks,
    refine_data,
    refine_factors,
)
from alignguard.models import tiny_sd_pipeline, tiny_sdxl_pipeline
from alignguard.models.tiny import TINY_HIDDEN
from alignguard.synthesis.store import PairCache

CATEGORIES = ("hate", "violence")
TOKENS = 8


def _cache(
    pairs_per_category: int = 6, sdxl: bool = False, pooled_dim: int = 0, text_dim: int = TINY_HIDDEN
) -> PairCache:
    """A synthesis cache of random latents and text embeddings (the shapes the tiny UNets take)."""
    rng = np.random.default_rng(0)
    n = pairs_per_category * len(CATEGORIES)

    def array(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    tensors = {
        "latents_unsafe": array(n, 4, 16, 16),
        "latents_safe": array(n, 4, 16, 16),
        "text_unsafe": array(n, TOKENS, text_dim),
        "text_safe": array(n, TOKENS, text_dim),
    }
    empty = {"text": array(1, TOKENS, text_dim)}
    if sdxl:
        tensors |= {"pooled_unsafe": array(n, pooled_dim), "pooled_safe": array(n, pooled_dim)}
        tensors["time_ids"] = np.tile(np.array([32, 32, 0, 0, 32, 32], np.float32), (n, 1))
        empty["pooled"] = array(1, pooled_dim)
    categories = [[CATEGORIES[i % len(CATEGORIES)]] for i in range(n)]
    return PairCache([f"p{i}" for i in range(n)], categories, tensors, empty)


def _experts(unet, up_std: float = 0.3):
    shapes = linear_layer_shapes(unet, ("attn2.to_k", "attn2.to_v"))
    return {
        c: random_lora(shapes, rank=4, alpha=4.0, seed=i, up_std=up_std) for i, c in enumerate(CATEGORIES)
    }


def _options(steps: int, **overrides) -> RefineOptions:
    values = dict(steps=steps, learning_rate=1e-2, batch_size=8, preserve_weight=1.0, probe_size=8, seed=0)
    return RefineOptions(**{**values, **overrides})


def _factors(lora) -> dict:
    return {n: (layer.up * layer.scale, layer.down) for n, layer in lora.layers.items()}


def _sample_inputs(unet):
    generator = torch.Generator().manual_seed(3)
    latents = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, TOKENS, TINY_HIDDEN, generator=generator)
    return latents, torch.tensor([10, 500]), text


def test_the_low_rank_hooks_apply_a_lora_exactly_as_diffusers_loads_it(tmp_path):
    pipe = tiny_sd_pipeline(0)
    expert = _experts(pipe.unet)["hate"]
    path = tmp_path / "pytorch_lora_weights.safetensors"
    path.write_bytes(lora_file_bytes(_factors(expert)))
    latents, timesteps, text = _sample_inputs(pipe.unet)
    with torch.no_grad():
        base = pipe.unet(latents, timesteps, encoder_hidden_states=text).sample
        pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
        loaded = pipe.unet(latents, timesteps, encoder_hidden_states=text).sample
        pipe.unload_lora_weights()
        with low_rank_hooks(pipe.unet, sorted(expert.layers)) as hooks:
            hooks.use(expert_factors(expert, torch.device("cpu")))
            hooked = pipe.unet(latents, timesteps, encoder_hidden_states=text).sample
            hooks.use(None)
            switched_off = pipe.unet(latents, timesteps, encoder_hidden_states=text).sample
        removed = pipe.unet(latents, timesteps, encoder_hidden_states=text).sample
    assert (loaded - base).abs().max() > 1e-3  # the LoRA does something
    torch.testing.assert_close(hooked, loaded, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(switched_off, base)
    torch.testing.assert_close(removed, base)  # no hook is left behind


def test_zero_steps_returns_the_merge_unchanged_and_the_reported_retention_is_exact():
    pipe = tiny_sd_pipeline(0)
    experts = _experts(pipe.unet)
    data = refine_data(_cache(), list(CATEGORIES))
    start = _factors(experts["hate"])  # "merged" = the hate expert itself
    refined, report = refine_factors(
        pipe.unet, pipe.scheduler, data, experts, start, _options(0), torch.device("cpu")
    )
    for name, (up, down) in start.items():
        assert torch.equal(refined[name][0], up) and torch.equal(refined[name][1], down)
    assert report["before"] == report["after"] and report["history"] == []
    retention = report["before"]["retention"]
    assert retention["hate"] == pytest.approx(1.0, abs=1e-6)  # reproduces the hate expert exactly
    assert retention["violence"] < 0.5  # and not the other one


def test_refinement_learns_both_experts_into_one_lora_and_is_seeded():
    """From the two experts' average (the linear merge: half of each effect, plus half of the
    other's), refinement recovers much of both experts' effect and moves the base model's
    predictions on safe and empty prompts far less."""
    pipe = tiny_sd_pipeline(0)
    experts = _experts(pipe.unet)
    data = refine_data(_cache(), list(CATEGORIES))
    average = {
        name: (
            torch.cat(
                [0.5 * experts[c].layers[name].up * experts[c].layers[name].scale for c in CATEGORIES], 1
            ),
            torch.cat([experts[c].layers[name].down for c in CATEGORIES]),
        )
        for name in experts["hate"].layers
    }
    options = _options(60)
    refined, report = refine_factors(
        pipe.unet, pipe.scheduler, data, experts, average, options, torch.device("cpu")
    )
    before, after = report["before"], report["after"]
    # Measured: retention 0.18 / 0.31 -> 0.64 / 0.63, drift 0.59 -> 0.08.
    assert before["min_retention"] < 0.35 and after["min_retention"] > 0.55
    assert after["drift"] < before["drift"] / 3
    assert len(report["history"]) >= 2 and report["history"][-1]["step"] == 60
    assert len({h["step"] for h in report["history"]}) == len(report["history"])  # no step twice
    assert {name: up.shape[1] for name, (up, _) in refined.items()} == {n: 8 for n in average}  # rank kept
    again, _ = refine_factors(pipe.unet, pipe.scheduler, data, experts, average, options, torch.device("cpu"))
    for name in refined:
        assert torch.equal(again[name][0], refined[name][0])
    assert not any(p.requires_grad for p in pipe.unet.parameters())


def test_refinement_runs_on_the_sdxl_layout():
    pipe = tiny_sdxl_pipeline(0)
    pooled = pipe.text_encoder_2.config.projection_dim
    experts = _experts(pipe.unet, up_std=0.1)
    text_dim = pipe.unet.config.cross_attention_dim
    data = refine_data(_cache(sdxl=True, pooled_dim=pooled, text_dim=text_dim), list(CATEGORIES))
    start = _factors(experts["violence"])
    _, report = refine_factors(
        pipe.unet, pipe.scheduler, data, experts, start, _options(2), torch.device("cpu")
    )
    assert report["before"]["retention"]["violence"] == pytest.approx(1.0, abs=1e-6)
    assert report["history"][-1]["step"] == 2


def test_a_category_without_pairs_or_without_an_expert_is_refused():
    with pytest.raises(ValueError, match="no synthesized pairs of category 'sexual'"):
        refine_data(_cache(), ["hate", "sexual"])
    pipe = tiny_sd_pipeline(0)
    experts = _experts(pipe.unet)
    data = refine_data(_cache(), list(CATEGORIES))
    with pytest.raises(ValueError, match=r"no expert for categories \['violence'\]"):
        refine_factors(
            pipe.unet, pipe.scheduler, data, {"hate": experts["hate"]}, {}, _options(1), torch.device("cpu")
        )
