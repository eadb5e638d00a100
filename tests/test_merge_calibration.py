"""Co-Merge calibration: the hooks apply exactly the LoRA, the statistics are the means they claim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from merge_support import linear_layer_shapes, random_lora

from alignguard.config import load_config
from alignguard.io import RunDir
from alignguard.merge import CalibrationData, collect_activation_stats, lora_file_bytes
from alignguard.merge.calibration import expert_hooks, noise_inputs
from alignguard.merge.providers import encode_text, select_provider, toyworld_provider
from alignguard.models import tiny_sd_pipeline, tiny_sdxl_pipeline

CROSS_K = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
SELF_Q_UP = "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q"


@pytest.fixture(scope="module")
def tiny():
    pipe = tiny_sd_pipeline(seed=0)
    shapes = linear_layer_shapes(pipe.unet)
    experts = {f"e{i}": random_lora(shapes, rank=4, alpha=4.0, seed=i, up_std=0.2) for i in range(2)}
    g = torch.Generator().manual_seed(0)
    data = CalibrationData(
        latents=torch.randn(3, 4, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(3, 16, 32, generator=g),
    )
    return pipe, experts, data


def test_hooks_apply_exactly_what_the_loaded_lora_applies(tiny, tmp_path):
    pipe, experts, data = tiny
    sample, t, text = data.latents[:2], torch.tensor([5, 900]), data.encoder_hidden_states[:2]
    with torch.no_grad(), expert_hooks(pipe.unet, experts["e0"]):
        hooked = pipe.unet(sample, t, encoder_hidden_states=text).sample
    path = tmp_path / "pytorch_lora_weights.safetensors"
    path.write_bytes(lora_file_bytes({n: (x.up * x.scale, x.down) for n, x in experts["e0"].layers.items()}))
    pipe.load_lora_weights(str(tmp_path), weight_name=path.name)
    with torch.no_grad():
        loaded = pipe.unet(sample, t, encoder_hidden_states=text).sample
    pipe.unload_lora_weights()
    with torch.no_grad():
        base = pipe.unet(sample, t, encoder_hidden_states=text).sample
    assert (loaded - base).abs().max() > 0.05
    torch.testing.assert_close(hooked, loaded, atol=1e-5, rtol=1e-5)


def test_statistics_are_the_exact_means_with_each_expert_active(tiny):
    pipe, experts, data = tiny
    stats = collect_activation_stats(pipe.unet, experts, data, timesteps_per_sample=2, seed=0, batch_size=4)
    # Cross-attention keys read the text embeddings: mean |x_j| and mean |(ΔW x)_o| are known exactly.
    text = data.encoder_hidden_states.reshape(-1, 32)
    for i, expert in enumerate(experts.values()):
        torch.testing.assert_close(
            stats.input_abs_mean[CROSS_K][i], text.abs().mean(dim=0), rtol=1e-5, atol=1e-6
        )
        expected_out = (text @ expert.layers[CROSS_K].delta().T).abs().mean(dim=0)
        torch.testing.assert_close(stats.output_abs_mean[CROSS_K][i], expected_out, rtol=1e-4, atol=1e-6)
    # Deeper layers see what the active expert's earlier layers produced: their inputs differ.
    first, second = stats.input_abs_mean[SELF_Q_UP]
    assert (first - second).abs().max() > 1e-3
    again = collect_activation_stats(pipe.unet, experts, data, timesteps_per_sample=2, seed=0, batch_size=3)
    torch.testing.assert_close(again.input_abs_mean[SELF_Q_UP], stats.input_abs_mean[SELF_Q_UP])
    assert stats.tokens["e0"] == stats.tokens["e1"] > 0


def test_noised_inputs_follow_the_forward_process_and_the_seed(tiny):
    _, _, data = tiny
    scheduler = DDPMScheduler()
    inputs = noise_inputs(data, 3, seed=7, scheduler=scheduler)
    assert inputs.noisy.shape == (9, 4, 16, 16) and inputs.source.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    alpha = scheduler.alphas_cumprod[inputs.timesteps].reshape(-1, 1, 1, 1)
    x0 = data.latents[inputs.source]
    noise = (inputs.noisy - alpha.sqrt() * x0) / (1 - alpha).sqrt()
    assert abs(float(noise.std()) - 1.0) < 0.05  # the residual is unit Gaussian noise
    torch.testing.assert_close(noise_inputs(data, 3, seed=7, scheduler=scheduler).noisy, inputs.noisy)
    assert not torch.equal(noise_inputs(data, 3, seed=8, scheduler=scheduler).noisy, inputs.noisy)


def test_sdxl_calibration_passes_added_conditioning():
    pipe = tiny_sdxl_pipeline(seed=0)
    embeds, added = encode_text(pipe, ["a red cat", "a dog on a street"], resolution=32)
    assert embeds.shape == (2, 16, 64) and added["text_embeds"].shape == (2, 32)
    assert added["time_ids"].tolist()[0] == [32, 32, 0, 0, 32, 32]
    data = CalibrationData(torch.randn(2, 4, 16, 16), embeds, added)
    experts = {"a": random_lora(linear_layer_shapes(pipe.unet), 2, 2.0, seed=0)}
    stats = collect_activation_stats(pipe.unet, experts, data, timesteps_per_sample=1, seed=0)
    assert all(bool(v.gt(0).all()) for v in stats.input_abs_mean.values())


def test_toyworld_provider_encodes_ground_truth_scenes_of_every_category(repo, tmp_path):
    from alignguard.toyworld.store import load_toy_pipeline

    config = load_config(repo / "configs/toy-smoke.yaml", ["merge.calibration.prompts_per_category=2"])
    source, provider = select_provider(config, RunDir(tmp_path))
    assert source == "toyworld" and provider is toyworld_provider
    pipe = load_toy_pipeline()
    data = provider(config, pipe, RunDir(tmp_path))
    benign = config.merge.calibration.benign_prompts
    assert benign > 0 and len(data) == 2 * 2 * len(config.data.categories) + benign + 1
    assert data.prompts[-1] == ""  # the unconditional branch's input is part of the set
    assert data.latents.shape == (len(data), 4, 8, 8) and data.encoder_hidden_states.shape[-1] == 64
    assert data.prompts[0] != data.prompts[1]  # an unsafe prompt, then its safe twin
    # The latents are the VAE's, scaled: decoding them gives back the scene (shape and colour).
    from alignguard.merge.providers import toyworld_scenes

    with torch.no_grad():
        decoded = pipe.vae.decode(data.latents[:4] / pipe.vae.config.scaling_factor).sample
    decoded = (decoded.permute(0, 2, 3, 1).numpy() + 1) / 2
    scenes = toyworld_scenes(data.prompts, config.merge.calibration.seed)[:4]
    assert float(np.mean((decoded - scenes) ** 2)) < 0.01
    assert torch.equal(provider(config, pipe, RunDir(tmp_path)).latents, data.latents)


def test_non_toy_models_need_a_calibration_source(repo, tmp_path):
    from alignguard.merge.providers import CalibrationUnavailable

    with pytest.raises(CalibrationUnavailable, match=r"merge\.calibration\.source=auto"):
        select_provider(load_config(repo / "configs/sd15.yaml"), RunDir(tmp_path))
    config = load_config(repo / "configs/toy.yaml", ["merge.calibration.source=synthesis"])
    with pytest.raises(CalibrationUnavailable, match=r"'synthesis': .* is not a complete synthesis stage"):
        select_provider(config, RunDir(tmp_path))


def test_routed_statistics_are_the_exact_moments_of_the_routed_tokens(tiny):
    from alignguard.merge import collect_routed_stats

    pipe, experts, data = tiny
    # Cross-attention keys read the text embeddings (twice: two timesteps): moments known exactly.
    text = data.encoder_hidden_states.reshape(-1, 32).double()
    deltas = torch.stack([e.layers[CROSS_K].delta() for e in experts.values()]).double()
    outputs = torch.einsum("noi,ti->nto", deltas, text)  # [n, T, out]
    activation = outputs.norm(dim=-1)
    active = activation >= 0.5 * activation.amax(dim=1, keepdim=True)  # [n, T]
    winner = activation.argmax(dim=0)
    winner_only = torch.nn.functional.one_hot(winner, 2).T.bool() & active
    assert (active.sum(dim=0) == 2).any() and (active.sum(dim=0) == 0).any()  # both cases occur
    for routing, mask in (("active", active), ("winner", winner_only)):
        stats = collect_routed_stats(
            pipe.unet, experts, data, timesteps_per_sample=2, seed=0, threshold=0.5, routing=routing
        )
        torch.testing.assert_close(stats.peaks[CROSS_K], activation.amax(dim=1).float(), rtol=1e-4, atol=1e-5)
        routed = (outputs * mask[:, :, None]).sum(dim=0)  # active: both outputs add up where both are on
        layer = stats.layers[CROSS_K]
        assert stats.routing == routing
        torch.testing.assert_close(layer.gram, 2 * text.T @ text, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(layer.cross, 2 * routed.T @ text, rtol=1e-4, atol=1e-4)
        assert layer.routed.tolist() == (2 * mask.sum(dim=1)).tolist()
        assert layer.unrouted == 2 * int((mask.sum(dim=0) == 0).sum()) and layer.tokens == 2 * text.shape[0]
        assert 0 < layer.unrouted_fraction < 1
    everything = collect_routed_stats(pipe.unet, experts, data, timesteps_per_sample=2, seed=0, threshold=0.0)
    assert everything.layers[CROSS_K].unrouted_fraction == 0.0
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\)"):
        collect_routed_stats(pipe.unet, experts, data, timesteps_per_sample=1, seed=0, threshold=1.0)
    with pytest.raises(ValueError, match="routing must be one of"):
        collect_routed_stats(pipe.unet, experts, data, 1, seed=0, threshold=0.5, routing="x")
