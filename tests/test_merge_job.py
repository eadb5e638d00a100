"""The merge job: config, input checks, and the whole stage through the CLI on a local Ray cluster."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from merge_support import write_random_experts

from alignguard.config import ConfigError, load_config
from alignguard.io import Manifest, RunDir, describe_outputs, stage_status, write_manifest
from alignguard.merge.preflight import MergeInputError, check_experts
from alignguard.merge.stage import BASELINES_DIR, MERGED_DIR
from jobs.cli import main

SMOKE = "configs/toy-smoke.yaml"


def _write_toy_experts(run_dir, config) -> int:
    """Writes random toy experts; returns how many UNet modules each one adapts."""
    from alignguard.toyworld.store import load_toy_pipeline

    unet = load_toy_pipeline().unet
    write_random_experts(
        RunDir(run_dir), unet, config.data.categories, config.training.lora, seed=0, up_std=0.05
    )
    targets = config.training.lora.target_modules
    return sum(1 for name, _ in unet.named_modules() if any(name.endswith(t) for t in targets))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("merge.strategy=average", "merge.strategy"),
        ("merge.baselines=[ties, nope]", "merge.baselines"),
        ("merge.baselines=[ties, ties]", "lists a baseline twice"),
        ("merge.calibration.source=cache", "merge.calibration.source"),
        ("merge.scale=0", "merge.scale"),
        ("merge.threshold=1", "merge.threshold"),
        ("merge.ridge=0", "merge.ridge"),
        ("merge.granularity=column", "merge.granularity"),
        ("merge.routing=all", "merge.routing"),
        ("merge.calibration.benign_prompts=-1", "merge.calibration.benign_prompts"),
        ("merge.refine.steps=-1", "merge.refine.steps"),
        ("merge.refine.learning_rate=0", "merge.refine.learning_rate"),
        ("merge.refine.epochs=3", "merge.refine.epochs"),
    ],
)
def test_invalid_merge_config_names_the_key(repo, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(repo / SMOKE, [override])


def test_concat_refuses_a_rank(repo):
    with pytest.raises(ConfigError, match=r"merge\.rank must be null for strategy 'concat'"):
        load_config(repo / SMOKE, ["merge.strategy=concat", "merge.rank=8"])


def test_merge_without_experts_exits_2_and_lists_them(repo, tmp_path, capsys):
    code = main(["merge", "--config", str(repo / SMOKE), f"run.output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "experts not ready" in err and "hate:" in err and "illegal_activity:" in err and "missing" in err


def test_a_damaged_expert_is_refused(repo, tmp_path):
    config = load_config(repo / SMOKE, [f"run.output_dir={tmp_path}", "data.categories=[hate, sexual]"])
    _write_toy_experts(tmp_path, config)
    assert set(check_experts(RunDir(tmp_path), config)) == {"hate", "sexual"}
    with open(tmp_path / "experts/sexual/pytorch_lora_weights.safetensors", "ab") as handle:
        handle.write(b"junk")
    with pytest.raises(MergeInputError, match=r"sexual: .* is not complete .*bytes"):
        check_experts(RunDir(tmp_path), config)


def _refused_before_any_work(repo, run_dir, capsys, *overrides: str) -> str:
    """Merges one random toy expert with ``overrides``; asserts exit 2 and nothing written; the
    error text."""
    base = [f"run.output_dir={run_dir}", "data.categories=[hate]"]
    _write_toy_experts(run_dir, load_config(repo / SMOKE, base))
    assert main(["merge", "--config", str(repo / SMOKE), *base, *overrides]) == 2
    assert not (run_dir / MERGED_DIR).exists()
    return capsys.readouterr().err


def test_co_merge_without_a_calibration_source_fails_before_any_work(repo, tmp_path, capsys):
    err = _refused_before_any_work(repo, tmp_path, capsys, "merge.calibration.source=synthesis")
    assert "merge.calibration.source='synthesis': " in err
    assert "is not a complete synthesis stage; run `alignguard synthesize` first" in err


def test_refinement_without_a_synthesis_cache_fails_before_any_work(repo, tmp_path, capsys):
    err = _refused_before_any_work(repo, tmp_path, capsys, "merge.refine.steps=5")
    assert "merge.refine needs the synthesis stage's training cache" in err
    assert "or set merge.refine.steps=0" in err


def test_refinement_refuses_a_synthesis_stage_rendered_without_its_training_cache(repo, tmp_path, capsys):
    # A complete synthesis stage (manifest written) whose shards carry images only:
    # synthesis.cache_latents=false. Refinement has nothing to distil over and must say so first.
    synthesis = RunDir(tmp_path).sub("synthesis")
    synthesis.write_json("shards/shard-00000.json", {"shard_id": 0, "pairs": [], "files": {}, "cache": None})
    outputs = describe_outputs(synthesis, ["shards/shard-00000.json"])
    write_manifest(synthesis, Manifest(stage="synthesis", config={}, config_hash="x", outputs=outputs))
    assert stage_status(synthesis).complete

    err = _refused_before_any_work(repo, tmp_path, capsys, "merge.refine.steps=5")
    assert "has no training cache: synthesize with synthesis.cache_latents=true" in err
    assert "or set merge.refine.steps=0" in err


def test_the_job_script_answers_help(repo):
    result = subprocess.run(
        [sys.executable, "jobs/merge.py", "--help"], cwd=repo, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "merge.baselines" in result.stdout and "--force" in result.stdout


@pytest.mark.slow
def test_merge_job_end_to_end_on_ray_then_the_toy_report_loads_the_merged_lora(
    repo, tmp_path, ray_cluster, capsys
):
    config = load_config(repo / SMOKE, [f"run.output_dir={tmp_path}"])
    adapted_modules = _write_toy_experts(tmp_path, config)
    assert adapted_modules > 0
    # Random experts, no synthesis stage: nothing to distil from (merge.refine is tested with a
    # synthesized run in test_training_fleet.py).
    unrefined = f"run.output_dir={tmp_path}", "merge.refine.steps=0"
    assert main(["merge", "--config", str(repo / SMOKE), *unrefined]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] is False and summary["label"] == "co_merge_token"
    assert summary["experts"] == list(config.data.categories)
    assert summary["energy_kept"] == pytest.approx(1.0, abs=1e-5)  # merge.rank null: exact

    run = RunDir(tmp_path)
    assert stage_status(run.sub(MERGED_DIR)).complete and stage_status(run.sub(BASELINES_DIR)).complete
    merged = tmp_path / MERGED_DIR
    pngs = {"winner_share.png", "sign_conflict.png", "delta_norms.png", "svd_energy.png"}
    assert pngs <= {p.name for p in merged.iterdir()}
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["calibration"]["source"] == "toyworld" and report["calibration"]["prompts"] == 56 + 4 + 1
    assert len(report["layers"]) == adapted_modules and sum(
        report["summary"]["mean_winner_share"].values()
    ) == pytest.approx(1)
    for name in config.merge.baselines:
        assert (tmp_path / BASELINES_DIR / name / "pytorch_lora_weights.safetensors").exists()

    lora = str(merged / "pytorch_lora_weights.safetensors")
    assert main(["toyworld", "report", "--lora", lora, "--n", "2", "--batch-size", "32"]) == 0
    toy_report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(toy_report["categories"]) == set(config.data.categories)
    assert all("preserved" in entry for entry in toy_report["categories"].values())

    assert main(["merge", "--config", str(repo / SMOKE), *unrefined]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] is True

    # Another routing is another merge (not skipped); every token some expert is active on is
    # routed, so no layer leaves more tokens to the base model than winner-take-all does.
    active = [*unrefined, "merge.routing=active", "merge.baselines=[]"]
    assert main(["merge", "--config", str(repo / SMOKE), *active]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] is False
    summed = json.loads((merged / "merge_report.json").read_text())["calibration"]
    winner = report["calibration"]
    assert summed["routing"] == "active" and winner["routing"] == "winner"
    for name, fraction in summed["unrouted_fraction"].items():
        assert fraction <= winner["unrouted_fraction"][name]
    assert sum(summed["unrouted_fraction"].values()) < sum(winner["unrouted_fraction"].values())
