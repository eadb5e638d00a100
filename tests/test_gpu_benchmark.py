"""benchmarks/gpu.py: the CPU dry run exercises every measurement; the full-size architectures it
builds for a GPU take the inputs it makes (checked on the meta device: FLOPs, no memory)."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
import torch

from alignguard.models.fullsize import UNET_FORWARD_TFLOP


@pytest.fixture(scope="module")
def gpu(repo):
    spec = importlib.util.spec_from_file_location("benchmark_gpu", repo / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_dry_run_measures_everything_on_tiny_models(gpu, tmp_path, capsys):
    assert gpu.main(["--dry-run", "--json", str(tmp_path / "gpu.json")]) == 0
    out = capsys.readouterr().out
    line = json.loads(out.strip().splitlines()[-1])
    assert line == json.loads((tmp_path / "gpu.json").read_text())
    assert line["dry_run"] and line["device"] == "cpu (dry run)" and line["peak_bf16_tflops"] is None
    assert [r["family"] for r in line["results"]] == ["sd15", "sdxl"]
    for r in line["results"]:
        assert r["skipped"] == []
        assert r["synthesis_images_per_s"] > 0 and r["dpo_pairs_per_s"] > 0 and r["serve_latency_ms_p50"] > 0
        assert r["unet_forward_tflop"] > 0 and r["synthesis_mfu"] is None  # no peak for a CPU
        # A DPO pair: policy forward + backward on w and l, reference forward on both: ~6 forwards,
        # as the performance notes' anchors (SD1.5: 4.8 / 0.803 TFLOP).
        assert 5.0 < r["dpo_tflop_per_pair"] / r["unet_forward_tflop"] < 7.0
    assert "| sd15 |" in out and "| sdxl |" in out


def test_dry_run_with_deepspeed_times_the_fleets_engine(repo, tmp_path):
    """The GPU run's DeepSpeed measurement (the family's recipe: ZeRO 2) on tiny models, gloo;
    in its own process: DeepSpeed initialises a process group."""
    import os
    import subprocess

    command = [sys.executable, str(repo / "benchmarks" / "gpu.py"), "--dry-run", "--deepspeed"]
    done = subprocess.run(
        [*command, "--json", str(tmp_path / "gpu.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for r in json.loads((tmp_path / "gpu.json").read_text())["results"]:
        assert r["skipped"] == [] and r["deepspeed_backend"] == "gloo"
        assert r["dpo_deepspeed_pairs_per_s"] > 0 and r["deepspeed_vs_plain"] > 0


def test_without_a_gpu_it_says_so(gpu, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert gpu.main(["--models", "sd15"]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_bad_model_name_is_refused(gpu, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--dry-run", "--models", "sd3"])
    assert exit_info.value.code == 2 and "sd3" in capsys.readouterr().err


def test_card_peaks(gpu):
    assert gpu.card_peak("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.card_peak("NVIDIA H200") == 989.0
    assert gpu.card_peak("NVIDIA H100 PCIe") == 756.0
    assert gpu.card_peak("NVIDIA GeForce RTX 4090") is None


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_full_size_architectures_take_the_benchmark_inputs(gpu, family):
    """The GPU path's model and inputs, on the meta device: the counted forward is the anchor."""
    meta = torch.device("meta")
    pipe = gpu.build_pipeline(family, False, meta, torch.bfloat16)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == gpu.FULL[family].resolution
    counted = gpu.unet_forward_tflop(pipe, gpu.FULL[family], meta, torch.bfloat16)
    assert counted == pytest.approx(UNET_FORWARD_TFLOP[family], rel=1e-3)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_the_dpo_recipe_is_the_familys_config(gpu, repo, family):
    """β, LoRA, optimizer and learning rate come from configs/<family>.yaml, not the benchmark."""
    from alignguard.config import load_config

    training = load_config(repo / "configs" / f"{family}.yaml").training
    plan = gpu.FULL[family]
    measured = gpu.recipe(plan, torch.bfloat16, zero_stage=0)
    assert (measured.beta, measured.lora, measured.optimizer, measured.learning_rate) == (
        training.beta,
        training.lora,
        training.optimizer,
        training.learning_rate,
    )
    assert (measured.batch_size, measured.grad_accum, measured.precision) == (plan.dpo_batch, 1, "bf16")
    assert measured.zero_stage == 0 and gpu.recipe(plan, torch.float32).precision == "fp32"


def test_deepspeed_step_benchmark_runs_every_variant_on_the_cpu(repo):
    """Each DeepSpeed variant the configs can ask for initialises and steps (gloo, tiny SD1.5);
    in its own process: DeepSpeed initialises a process group."""
    import os
    import subprocess

    script = repo / "benchmarks" / "deepspeed_step.py"
    done = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--models", "sd15", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = json.loads(done.stdout.strip().splitlines()[-1])
    rows = line["results"]["sd15"]
    assert line["backend"] == "gloo" and len(rows) == 2 + 8
    assert "deepspeed zero2 clip1.0 adafactor" in rows  # configs/sdxl.yaml's combination
    assert all(row["pairs_per_s"] > 0 for row in rows.values())


def test_deepspeed_step_benchmark_refuses_zero_rounds(repo, capsys):
    spec = importlib.util.spec_from_file_location(
        "benchmark_ds_step", repo / "benchmarks" / "deepspeed_step.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--dry-run", "--rounds", "0"])
    assert exit_info.value.code == 2 and "--rounds: must be >= 1, got 0" in capsys.readouterr().err
