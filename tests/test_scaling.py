"""Scaling by config: resources.* reach the drivers; nonsense is refused; sizing arithmetic."""

from __future__ import annotations

import math

import pytest

from alignguard.config import ConfigError, load_config
from alignguard.sizing import (
    COPROV2_PAIRS,
    UNET_FORWARD_TFLOP,
    estimate,
    image_tflop,
    measured_mfu,
    sizing_table,
    training_pairs_per_expert,
)
from jobs.cli import main


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("resources.synthesis.num_gpus=2", "resources.synthesis.num_gpus: .*at most 1, got 2"),
        ("resources.training.num_gpus=4", "resources.training.num_gpus: .*raise concurrency instead"),
        ("resources.serve.concurrency=4", "resources.serve: .*serve.autoscaling"),
        ("resources.merge.concurrency=2", "resources.merge: .*one actor"),
    ],
)
def test_resources_that_would_be_wasted_or_ignored_are_refused(repo, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(repo / "configs" / "sd15.yaml", [override])


def test_fractional_gpus_share_a_device(repo):
    config = load_config(repo / "configs" / "sd15.yaml", ["resources.evaluation.num_gpus=0.5"])
    assert config.resources.evaluation.num_gpus == 0.5


def test_training_driver_reads_its_resources(repo, tmp_path):
    from cluster.training import build_trainer, plan_experts

    config = load_config(
        repo / "configs" / "sd15.yaml",
        [f"run.output_dir={tmp_path}", "resources.training.concurrency=3", "resources.training.num_cpus=6"],
    )
    scaling = build_trainer(config, plan_experts(config)[0]).scaling_config
    assert scaling.num_workers == 3 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 6.0, "GPU": 1.0}
    cpu_only = load_config(repo / "configs" / "toy.yaml", [f"run.output_dir={tmp_path}"])
    scaling = build_trainer(cpu_only, plan_experts(cpu_only)[0]).scaling_config
    assert not scaling.use_gpu and scaling.resources_per_worker == {"CPU": 0.25}


def test_serving_driver_reads_its_resources(repo):
    from serve.app import generator_options

    config = load_config(
        repo / "configs" / "sd15.yaml", ["resources.serve.num_gpus=0.5", "resources.serve.num_cpus=2"]
    )
    options = generator_options(config)
    assert options["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 0.5}
    assert options["autoscaling_config"]["max_replicas"] == config.serve.autoscaling.max_replicas == 8


def test_flop_constants_match_the_fullsize_models():
    from alignguard.models.fullsize import UNET_FORWARD_TFLOP as COUNTED

    assert UNET_FORWARD_TFLOP == COUNTED


def test_image_flops_reproduce_the_performance_notes(repo):
    sd15 = load_config(repo / "configs" / "sd15.yaml")
    sdxl = load_config(repo / "configs" / "sdxl.yaml")
    assert image_tflop(sd15, 25, 7.5) == pytest.approx(42.7, abs=0.01)
    assert image_tflop(sd15, 50, 7.5) == pytest.approx(82.9, abs=0.1)
    assert image_tflop(sd15, 50, 1.0) == pytest.approx(50 * 0.803 + 2.55, abs=0.01)  # no CFG: one pass
    assert image_tflop(sdxl, 30, 5.0) == pytest.approx(416.0, abs=0.01)
    # Other resolutions scale with the pixel count.
    sd15_768 = load_config(repo / "configs" / "sd15.yaml", ["model.resolution=768"])
    assert image_tflop(sd15_768, 25, 7.5) == pytest.approx(42.7 * 2.25, abs=0.05)


def test_stage_estimates_follow_the_config(repo):
    config = load_config(repo / "configs" / "sd15.yaml")
    by_stage = {e.stage: e for e in estimate(config)}
    pairs = round(COPROV2_PAIRS * 0.95)
    assert by_stage["synthesis"].tflop == pytest.approx(2 * pairs * image_tflop(config, 50, 7.5))
    # 2000 steps x batch 4 x accumulation 4 x 2 workers per expert; 7 experts; 4.8 TFLOP per pair.
    assert training_pairs_per_expert(config) == 64_000
    assert by_stage["training"].tflop == pytest.approx(7 * 64_000 * 4.8)
    assert by_stage["training"].gpus == 14  # 7 concurrent experts x 2 workers x 1 GPU
    assert by_stage["synthesis"].gpu_hours(0.3) == pytest.approx(2.31, abs=0.01)
    assert by_stage["synthesis"].wall_hours(0.3) == pytest.approx(2.31 / 8, abs=0.01)
    # Gradient checkpointing costs SD1.5's measured ratio; all_single trains 7x the steps.
    checkpointed = load_config(repo / "configs" / "sd15.yaml", ["training.gradient_checkpointing=true"])
    assert estimate(checkpointed)[1].tflop == pytest.approx(7 * 64_000 * 6.4)
    both = load_config(repo / "configs" / "sd15.yaml", ["training.experts=both"])
    assert estimate(both)[1].tflop == pytest.approx(14 * 64_000 * 4.8)


def test_sizing_table_and_cli(repo, capsys):
    config = load_config(repo / "configs" / "sdxl.yaml")
    table = sizing_table(estimate(config), (0.3, 0.1), 989.0)
    total = table.splitlines()[-1]
    assert total.startswith("| **total**")
    gpu_hours = float(total.split("|")[4])
    assert gpu_hours == pytest.approx(sum(e.gpu_hours(0.3) for e in estimate(config)), abs=0.01)
    assert main(["cluster", "size", "--config", str(repo / "configs/sd15.yaml"), "--mfu", "0.1"]) == 0
    assert "GPU-h @ 10%" in capsys.readouterr().out
    assert main(["cluster", "size", "--config", str(repo / "configs/toy.yaml")]) == 2
    assert "model.family 'toy'" in capsys.readouterr().err


def test_cpu_only_stage_has_no_wall_time(repo):
    config = load_config(repo / "configs" / "sd15.yaml", ["resources.merge.num_gpus=0"])
    merge = next(e for e in estimate(config) if e.stage == "merge")
    assert math.isnan(merge.wall_hours(0.3)) and merge.gpu_hours(0.3) > 0


def _benchmark(**row) -> dict:
    """A benchmarks/gpu.py result with one sd15 row (the shape its --json writes)."""
    base = {"family": "sd15", "synthesis_mfu": 0.2, "dpo_mfu": 0.25, "deepspeed_vs_plain": 0.8, "skipped": []}
    return {
        "device": "NVIDIA H200",
        "dry_run": False,
        "peak_bf16_tflops": 989.0,
        "results": [{**base, **row}],
    }


def test_measured_mfu_is_per_stage_and_training_goes_through_deepspeed(repo):
    measured = measured_mfu(_benchmark(), "sd15")
    assert measured.for_stage("synthesis") == measured.for_stage("evaluation") == 0.2
    assert measured.for_stage("merge") == 0.2  # calibration: batched UNet forwards, like rendering
    assert measured.for_stage("training") == pytest.approx(0.25 * 0.8)
    assert measured_mfu(_benchmark(deepspeed_vs_plain=None), "sd15").training == 0.25
    config = load_config(repo / "configs" / "sd15.yaml")
    estimates = estimate(config)
    table = sizing_table(estimates, (0.3,), 989.0, measured)
    total = [c.strip() for c in table.splitlines()[-1].split("|")]
    expected = sum(e.gpu_hours(measured.for_stage(e.stage), 989.0) for e in estimates)
    assert float(total[-3]) == pytest.approx(expected, abs=0.01)
    training = next(line for line in table.splitlines() if line.startswith("| training"))
    assert "| 20.0% |" in training


@pytest.mark.parametrize(
    ("benchmark", "message"),
    [
        ({**_benchmark(), "dry_run": True}, "dry-run"),
        (_benchmark(family="sdxl"), "no 'sd15' figures .*sdxl"),
        (_benchmark(dpo_mfu=None, skipped=["dpo: out of GPU memory"]), "lacks .*out of GPU memory"),
    ],
)
def test_unusable_benchmark_results_are_refused(benchmark, message):
    with pytest.raises(ValueError, match=message):
        measured_mfu(benchmark, "sd15")


def test_size_cli_reads_the_recorded_gpu_result(repo, tmp_path, capsys):
    recorded = repo / "benchmarks" / "results" / "gpu-h200-2026-11-28.json"
    config = str(repo / "configs" / "sdxl.yaml")
    assert main(["cluster", "size", "--config", config, "--measured", str(recorded)]) == 0
    out = capsys.readouterr().out
    assert "GPU-h measured" in out and "NVIDIA H200" in out
    broken = tmp_path / "gpu.json"
    broken.write_text("{not json")
    assert main(["cluster", "size", "--config", config, "--measured", str(broken)]) == 2
    assert "--measured" in capsys.readouterr().err


def test_merge_refinement_is_counted_in_the_merge_stage(repo):
    plain = load_config(repo / "configs" / "sd15.yaml")
    refined = load_config(repo / "configs" / "sd15.yaml", ["merge.refine.steps=300"])
    merge = {c: next(e for e in estimate(c) if e.stage == "merge") for c in (plain, refined)}
    # 300 steps x (35 distilled + 32 preserved inputs) x (1 teacher + 3 student) forwards of 0.803
    extra = 300 * (35 + 32) * 4 * UNET_FORWARD_TFLOP["sd15"]
    assert merge[refined].tflop - merge[plain].tflop == pytest.approx(extra)
    assert "refinement 80,400 forward-equivalents" in merge[refined].work
