"""Training math and plumbing that need no Ray: the loss, batches, one step, checkpoints, DS config."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from training_support import random_pair_cache

from alignguard.config.schema import LoraSection, TrainingSection
from alignguard.lora import add_lora
from alignguard.models import tiny_sd_pipeline
from alignguard.synthesis.store import PairCache
from alignguard.training.batches import PreferenceSampler
from alignguard.training.checkpoint import decode_tree, encode_tree, load_tree, save_tree
from alignguard.training.deepspeed_config import deepspeed_config
from alignguard.training.losses import diffusion_dpo_loss, per_example_mse, sft_loss
from alignguard.training.step import preference_loss


def test_dpo_loss_matches_hand_computed_numbers():
    # inside = -β/2 · [(Lθ(w) - Lθ(l)) - (Lref(w) - Lref(l))] with β = 10:
    #   pair 0: -5 · [(0.1 - 0.3) - (0.2 - 0.2)] = 1.0;  pair 1: -5 · [(0.2 - 0.1) - 0] = -0.5
    out = diffusion_dpo_loss(
        torch.tensor([0.1, 0.2]),
        torch.tensor([0.3, 0.1]),
        torch.tensor([0.2, 0.2]),
        torch.tensor([0.2, 0.2]),
        beta=10,
    )
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2  # -log σ(x) = log(1 + e^-x)
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)  # 0.643671
    assert out.metrics["implicit_acc"] == 0.5
    assert out.metrics["reward_margin"] == pytest.approx(0.25)
    assert out.metrics["policy_mse_w"] == pytest.approx(0.15) and out.metrics["ref_mse_l"] == pytest.approx(
        0.2
    )
    anchored = diffusion_dpo_loss(
        torch.tensor([0.1, 0.2]),
        torch.tensor([0.3, 0.1]),
        torch.tensor([0.2, 0.2]),
        torch.tensor([0.2, 0.2]),
        beta=10,
        anchor_weight=2.0,
    )
    assert anchored.loss.item() == pytest.approx(expected + 2.0 * 0.15, abs=1e-6)
    assert sft_loss(torch.tensor([0.1, 0.3])).loss.item() == pytest.approx(0.2)
    assert per_example_mse(torch.ones(2, 1, 2, 2), torch.zeros(2, 1, 2, 2)).tolist() == [1.0, 1.0]


def test_dpo_loss_gradient_only_reaches_the_policy():
    policy_w = torch.tensor([0.1, 0.2], requires_grad=True)
    ref_w = torch.tensor([0.2, 0.2], requires_grad=True)
    diffusion_dpo_loss(
        policy_w, torch.tensor([0.3, 0.1]), ref_w, torch.tensor([0.2, 0.2]), beta=10
    ).loss.backward()
    assert policy_w.grad is not None and ref_w.grad is None
    assert (policy_w.grad > 0).all()  # lowering the preferred image's error lowers the loss


def _cache(n: int = 6) -> PairCache:
    rng = np.random.default_rng(0)
    tensors = {
        "latents_safe": rng.normal(size=(n, 4, 4, 4)).astype(np.float32),
        "latents_unsafe": rng.normal(size=(n, 4, 4, 4)).astype(np.float32),
        "text_safe": np.full((n, 3, 8), 1.0, np.float32),
        "text_unsafe": np.full((n, 3, 8), -1.0, np.float32),
    }
    return PairCache(
        [f"p{i}" for i in range(n)], [["hate"]] * n, tensors, {"text": np.zeros((1, 3, 8), np.float32)}
    )


def test_batches_are_a_pure_function_of_step_and_rank():
    cache = _cache()
    sampler = PreferenceSampler(cache, "both_prompts", 0.0, batch_size=3, seed=1)
    again = PreferenceSampler(cache, "both_prompts", 0.0, batch_size=3, seed=1)
    assert [sampler.indices(s) for s in range(10)] == [again.indices(s) for s in range(10)]
    epoch = [item for step in range(4) for item in sampler.indices(step)]  # 12 items = one epoch
    assert sorted(epoch) == sorted((i, side) for i in range(6) for side in ("unsafe", "safe"))
    ranks = [PreferenceSampler(cache, "both_prompts", 0.0, 3, seed=1, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].indices(0) + ranks[1].indices(0) == sampler.indices(0) + sampler.indices(1)
    batch = sampler.batch(0)
    for position, (index, side) in enumerate(sampler.indices(0)):
        assert np.array_equal(batch.latents_w[position].numpy(), cache.tensors["latents_safe"][index])
        assert np.array_equal(batch.latents_l[position].numpy(), cache.tensors["latents_unsafe"][index])
        assert batch.text[position, 0, 0].item() == (1.0 if side == "safe" else -1.0)
    unsafe_only = PreferenceSampler(cache, "unsafe_prompt", 0.0, 3, seed=1)
    assert {side for step in range(4) for _, side in unsafe_only.indices(step)} == {"unsafe"}


def test_caption_dropout_swaps_in_the_empty_prompt():
    sampler = PreferenceSampler(_cache(), "unsafe_prompt", 0.5, batch_size=200, seed=3)
    dropped = (sampler.batch(0).text[:, 0, 0] == 0.0).float().mean().item()
    assert 0.35 < dropped < 0.65
    assert (
        sampler.batch(0).preserve_text[1::2].abs().sum() == 0
    )  # preservation captions: safe, empty, safe, ...
    with pytest.raises(ValueError, match="no pairs"):
        PreferenceSampler(_cache(0), "unsafe_prompt", 0.0, 2, seed=0)


@pytest.fixture(scope="module")
def tiny_unet():
    pipe = tiny_sd_pipeline(seed=0)
    return pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config)


def _latent_batch(seed: int = 0):
    cache = random_pair_cache(4, seed)
    return PreferenceSampler(cache, "both_prompts", 0.0, 4, seed=0).batch(0)


def test_a_fresh_adapter_is_the_reference(tiny_unet):
    unet, scheduler = tiny_unet
    add_lora(unet, LoraSection(rank=2, alpha=2.0, target_modules=("to_k", "to_v")))
    out = preference_loss(unet, scheduler, _latent_batch(), torch.Generator().manual_seed(0), beta=5000.0)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-5)  # B = 0: policy == reference
    assert out.metrics["policy_mse_w"] == pytest.approx(out.metrics["ref_mse_w"], abs=1e-6)
    out.loss.backward()
    grads = {name: p.grad for name, p in unet.named_parameters() if p.grad is not None}
    assert grads and all("lora" in name for name in grads)
    with torch.no_grad():  # a non-zero adapter now differs from the (adapter-disabled) reference
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    changed = preference_loss(
        unet,
        scheduler,
        _latent_batch(),
        torch.Generator().manual_seed(0),
        beta=5000.0,
        preserve_weight=1.0,
        timestep_range=(0, 10),
    )
    assert changed.metrics["policy_mse_w"] != pytest.approx(changed.metrics["ref_mse_w"], abs=1e-6)
    assert changed.metrics["preserve"] > 0


def test_checkpoint_trees_roundtrip_without_pickles(tmp_path):
    import enum

    class Stage(enum.Enum):
        TWO = 2

    tree = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(4)}},
        "groups": [{"lr": 1e-3, "betas": (0.9, 0.99)}],
        "scaler": object(),
        "stage": Stage.TWO,
        "name": "adamw",
        "none": None,
    }
    tensors, skeleton = encode_tree(tree)
    assert len(tensors) == 2
    fresh = {"scaler": "fresh-scaler", "stage": "fresh-stage"}
    back = decode_tree(skeleton, tensors, fresh)
    assert back["state"][0]["exp_avg"].tolist() == [1.0] * 4 and list(back["state"]) == [
        0
    ]  # int keys survive
    assert (
        back["groups"][0]["betas"] == (0.9, 0.99)
        and back["scaler"] == "fresh-scaler"
        and back["none"] is None
    )
    save_tree(tmp_path, "opt", tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["opt.json", "opt.safetensors"]
    assert load_tree(tmp_path, "opt", fresh)["state"][0]["step"].item() == 3.0


def test_deepspeed_config_follows_training_config():
    training = TrainingSection(
        batch_size=4, grad_accum=2, zero_stage=2, learning_rate=1e-5, scale_lr=True, warmup_steps=50
    )
    cpu = deepspeed_config(training, on_gpu=False, world_size=2)
    assert cpu["train_batch_size"] == 16 and cpu["zero_optimization"]["stage"] == 2
    assert not cpu["bf16"]["enabled"] and cpu["optimizer"]["params"]["lr"] == pytest.approx(1e-5 * 16)
    assert cpu["scheduler"]["params"]["warmup_num_steps"] == 50 and cpu["gradient_clipping"] == 1.0
    gpu = deepspeed_config(training.model_copy(update={"optimizer": "adafactor"}), on_gpu=True, world_size=1)
    assert gpu["bf16"]["enabled"] and "optimizer" not in gpu  # Adafactor is passed as a client optimizer
    # ZeRO 1-2 refuse a client optimizer without this (configs/sdxl.yaml: Adafactor + ZeRO 2).
    assert gpu["zero_allow_untested_optimizer"] is True
    assert "zero_allow_untested_optimizer" not in cpu
