"""Merged LoRAs in the diffusers format: stock ``load_lora_weights`` applies exactly the merged ΔW."""

from __future__ import annotations

import copy

import pytest
import torch
from merge_support import write_random_experts

from alignguard.config.schema import LoraSection
from alignguard.io import RunDir
from alignguard.merge import LoraFormatError, MergeOptions, lora_file_bytes, merge_experts, read_lora_bytes
from alignguard.models import tiny_sd_pipeline

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


@pytest.fixture(scope="module")
def expert_files(tmp_path_factory):
    """Three experts written by the training code path: ranks 2/3/4, alphas ≠ ranks, and the third
    one on cross-attention keys and values only (so merged ranks differ per layer)."""
    run = RunDir(tmp_path_factory.mktemp("run"))
    specs = [
        LoraSection(rank=2, alpha=4.0, target_modules=TARGETS),
        LoraSection(rank=3, alpha=1.5, target_modules=TARGETS),
        LoraSection(rank=4, alpha=4.0, target_modules=("attn2.to_k", "attn2.to_v")),
    ]
    paths = {}
    for i, spec in enumerate(specs):
        unet = tiny_sd_pipeline(seed=0).unet
        paths |= write_random_experts(run, unet, [f"e{i}"], spec, seed=i, up_std=0.1)
    return {name: run.path(rel) for name, rel in paths.items()}


def _unet_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 4, 16, 16, generator=g),
        torch.tensor([10, 700]),
        torch.randn(2, 16, 32, generator=g),
    )


@torch.no_grad()
def _forward(unet) -> torch.Tensor:
    sample, t, text = _unet_inputs()
    return unet(sample, t, encoder_hidden_states=text).sample


def _load(pipe, path: str, adapter_name: str | None = None) -> None:
    directory, name = path.rsplit("/", 1)
    pipe.load_lora_weights(directory, weight_name=name, adapter_name=adapter_name)


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name / "pytorch_lora_weights.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return str(path)


def _patched(unet, deltas: dict[str, torch.Tensor]):
    """A copy of the base UNet with W + ΔW written into the weights (no LoRA machinery)."""
    patched = copy.deepcopy(unet)
    with torch.no_grad():
        for name, delta in deltas.items():
            patched.get_submodule(name).weight += delta
    return patched


def _read(path: str):
    with open(path, "rb") as handle:
        return read_lora_bytes(handle.read(), source=path)


def test_reads_training_written_experts_with_their_alpha_over_rank(expert_files):
    pipe = tiny_sd_pipeline(seed=0)
    base = _forward(pipe.unet)
    for name, path in expert_files.items():
        expert = _read(path)
        _load(pipe, path)
        for layer_name, layer in expert.layers.items():
            peft_delta = pipe.unet.get_submodule(layer_name).get_delta_weight("default_0")
            torch.testing.assert_close(layer.delta(), peft_delta, atol=1e-6, rtol=1e-5)
        with_lora = _forward(pipe.unet)
        pipe.unload_lora_weights()
        assert (with_lora - base).abs().max() > 0.05, name  # the experts do something
        deltas = {n: layer.delta() for n, layer in expert.layers.items()}
        torch.testing.assert_close(_forward(_patched(pipe.unet, deltas)), with_lora, atol=1e-4, rtol=1e-4)
    assert {layer.scale for layer in _read(expert_files["e1"]).layers.values()} == {0.5}


def test_exact_concatenation_equals_all_adapters_applied_at_once(expert_files, tmp_path):
    pipe = tiny_sd_pipeline(seed=0)
    for name, path in expert_files.items():
        _load(pipe, path, adapter_name=name)
    pipe.set_adapters(list(expert_files), [1.0] * len(expert_files))
    all_at_once = _forward(pipe.unet)
    pipe.unload_lora_weights()
    experts = {name: _read(path) for name, path in expert_files.items()}
    result = merge_experts(experts, MergeOptions(strategy="concat"))
    ranks = {f.rank for f in result.factors.values()}
    assert ranks == {5, 9}  # 2 + 3 everywhere, + 4 on cross-attention k/v: a rank_pattern file
    _load(pipe, _write(tmp_path, "concat", lora_file_bytes(result.file_factors())))
    merged = _forward(pipe.unet)
    torch.testing.assert_close(merged, all_at_once, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "options",
    [
        MergeOptions(strategy="ties", density=0.4),  # dense merge, exact full-rank factorisation
        MergeOptions(strategy="dare_linear", density=0.5, rank=3, scale=2.0),  # truncated SVD
        MergeOptions(strategy="linear", rank=2, svd="randomized"),
    ],
    ids=lambda o: o.label + ("" if o.rank is None else f"-rank{o.rank}"),
)
def test_the_merged_lora_forward_matches_the_merged_delta_w(expert_files, tmp_path, options):
    from alignguard.merge import merge_layer

    experts = {name: _read(path) for name, path in expert_files.items()}
    result = merge_experts(experts, options)
    pipe = tiny_sd_pipeline(seed=0)
    expected_deltas = {}
    for index, name in enumerate(sorted(result.factors)):
        layers = [e.layers.get(name) for e in experts.values()]
        merged = merge_layer(name, layers, options, index=index)
        factors = result.factors[name]
        expected_deltas[name] = factors.up @ factors.down
        if options.rank is None:  # exact: the file holds the merged ΔW itself
            torch.testing.assert_close(expected_deltas[name], merged.delta, atol=1e-5, rtol=1e-4)
        else:
            assert factors.rank == options.rank and 0 < factors.energy_kept < 1
    expected = _forward(_patched(pipe.unet, expected_deltas))
    _load(pipe, _write(tmp_path, options.label, lora_file_bytes(result.file_factors())))
    torch.testing.assert_close(_forward(pipe.unet), expected, atol=1e-4, rtol=1e-4)


def test_unmergeable_files_fail_with_the_key_named():
    from safetensors.torch import save

    down, up = torch.zeros(2, 8), torch.zeros(8, 2)
    cases = {
        "text_encoder.x.lora.down.weight": {"text_encoder.x.lora.down.weight": down},
        "only its down factor": {"unet.x.lora.down.weight": down},
        "only Linear": {"unet.x.lora.down.weight": torch.zeros(2, 8, 1, 1), "unet.x.lora.up.weight": up},
        "ranks differ": {"unet.x.lora.down.weight": down, "unet.x.lora.up.weight": torch.zeros(8, 3)},
    }
    for message, tensors in cases.items():
        with pytest.raises(LoraFormatError, match=message):
            read_lora_bytes(save(tensors), source="f.safetensors")
    with pytest.raises(LoraFormatError, match="not a safetensors file"):
        read_lora_bytes(b"not safetensors", source="f.safetensors")
