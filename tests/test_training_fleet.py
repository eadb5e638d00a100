"""Safety experts on Ray Train + DeepSpeed, end to end on the toy world (local Ray cluster)."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from alignguard.config import load_config
from alignguard.io import RunDir
from cluster.synthesis import run_synthesis
from cluster.training import plan_experts, run_fleet, run_name

pytestmark = pytest.mark.slow
CATEGORIES = "[hate, violence]"


@pytest.fixture(scope="module")
def synthesized(ray_cluster, repo, tmp_path_factory):
    """A toy-smoke synthesis stage for two categories, shared by this module's runs."""
    run = tmp_path_factory.mktemp("fleet")
    overrides = [f"run.output_dir={run}", f"data.categories={CATEGORIES}"]
    run_synthesis(load_config(repo / "configs/toy-smoke.yaml", overrides))
    return run, overrides


def _config(repo, overrides, *extra):
    return load_config(repo / "configs/toy-smoke.yaml", [*overrides, *extra])


def _steps(run, expert: str) -> list[int]:
    lines = RunDir(run).sub("experts", expert).read_text("steps.jsonl").splitlines()
    return [json.loads(line)["step"] for line in lines]


def test_two_experts_train_concurrently_and_load_in_stock_diffusers(synthesized, repo, monkeypatch):
    from alignguard.toyworld.report import load_lora
    from alignguard.toyworld.store import load_toy_pipeline

    run, _ = synthesized
    # A relative run directory, as README command 1 has (runs/toy): Ray Train's workers run in
    # their own artifacts directory, so the config must carry it resolved.
    monkeypatch.chdir(run.parent)
    config = _config(
        repo,
        [f"run.output_dir={run.name}", f"data.categories={CATEGORIES}"],
        "training.steps=6",
        "training.checkpoint_every=3",
        "training.log_every=2",
        "training.monitor_every=3",
        "training.monitor_prompts=2",
    )
    assert config.run.output_dir == str(run)
    outcomes = run_fleet(config)
    assert [(o.name, o.status) for o in outcomes] == [("hate", "trained"), ("violence", "trained")]
    for outcome in outcomes:
        assert outcome.steps == 6 and 0.0 <= outcome.final["implicit_acc"] <= 1.0
        assert "monitor_ip" in outcome.final and outcome.final["loss"] > 0
        assert _steps(run, outcome.name) == list(range(1, 7))
    lora = RunDir(run).path("experts", "hate", "pytorch_lora_weights.safetensors")
    pipe = load_toy_pipeline()
    load_lora(pipe, lora)  # diffusers' own load_lora_weights
    assert pipe.get_active_adapters()
    rerun = run_fleet(config)
    assert [o.status for o in rerun] == ["skipped", "skipped"]


def test_a_killed_training_worker_resumes_from_its_checkpoint(synthesized, repo):
    from raytools import kill_workers

    run, overrides = synthesized
    config = _config(
        repo,
        overrides,
        "data.categories=[violence]",
        "training.steps=40",
        "training.checkpoint_every=5",
        "training.log_every=5",
        "training.monitor_prompts=0",
        "training.lora.rank=2",
    )
    (expert,) = plan_experts(config)
    checkpoints = RunDir(run).sub("experts", "_ray_train", run_name(config, expert))
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("result", run_fleet(config)))
    worker.start()
    killed, deadline = [], time.monotonic() + 300
    while not killed and worker.is_alive() and time.monotonic() < deadline:
        if any(name.startswith("checkpoint") for name in checkpoints.listdir()):
            killed = kill_workers("RayTrainWorker")
        time.sleep(0.2)
    worker.join(timeout=600)
    assert killed, "no training worker was found to kill"
    (result,) = outcome["result"]
    assert result.status == "trained", result.error
    steps = _steps(run, "violence")
    assert steps == list(range(1, 41)), "every step exactly once after the restart"


def test_the_synthesis_cache_is_a_calibration_set_for_co_merge(synthesized, repo):
    """``merge.calibration.source=synthesis``: each category's seeded pairs (both sides, the
    model's own renders) plus the empty prompt over safe images, straight from the cache."""
    from alignguard.merge.providers import select_provider
    from alignguard.synthesis.store import load_pair_cache
    from alignguard.toyworld.store import load_toy_pipeline

    run, overrides = synthesized
    extra = ["merge.calibration.source=synthesis", "merge.calibration.prompts_per_category=3"]
    config = _config(repo, overrides, *extra, "merge.calibration.benign_prompts=2")
    source, provider = select_provider(config, RunDir(run))
    assert source == "synthesis"
    data = provider(config, load_toy_pipeline(), RunDir(run))
    pairs = 3 * len(config.data.categories)
    assert len(data) == 2 * pairs + 2 and data.prompts[-2:] == ["", ""]
    cache = load_pair_cache(RunDir(run).sub("synthesis"))
    first = cache.pair_ids.index(data.prompts[0].removesuffix(":unsafe"))
    assert torch.equal(data.latents[0], torch.from_numpy(cache.tensors["latents_unsafe"][first]))
    assert torch.equal(data.latents[pairs], torch.from_numpy(cache.tensors["latents_safe"][first]))
    assert torch.equal(data.encoder_hidden_states[-1], torch.from_numpy(cache.empty["text"][0]))
    assert torch.equal(provider(config, load_toy_pipeline(), RunDir(run)).latents, data.latents)  # seeded
    assert data.added_cond_kwargs is None  # SD layout: no pooled embeddings


def test_merge_refines_co_merge_by_distilling_the_experts_through_the_cli(
    synthesized, repo, tmp_path, capsys
):
    """``alignguard merge ... merge.refine.steps=N`` on Ray: the synthesis cache feeds the
    distillation, the report records retention before/after, the file is the refined LoRA, and
    the refinement is part of the stage's key."""
    import shutil

    from merge_support import write_random_experts

    from alignguard.toyworld.report import load_lora
    from alignguard.toyworld.store import load_toy_pipeline
    from jobs.cli import main

    run, _ = synthesized
    shutil.copytree(run / "synthesis", tmp_path / "synthesis")
    overrides = [f"run.output_dir={tmp_path}", f"data.categories={CATEGORIES}", "merge.baselines=[]"]
    config = _config(repo, overrides)
    write_random_experts(
        RunDir(tmp_path), load_toy_pipeline().unet, config.data.categories, config.training.lora, 0, 0.05
    )
    command = ["merge", "--config", str(repo / "configs/toy-smoke.yaml"), *overrides]
    assert main([*command, "merge.refine.steps=20"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    before, after = summary["refine"]["before"], summary["refine"]["after"]
    assert set(before["retention"]) == {"hate", "violence"}
    assert after["min_retention"] > before["min_retention"]
    merged = tmp_path / "merged"
    report = json.loads((merged / "merge_report.json").read_text())
    assert report["refine"]["options"]["steps"] == 20 and report["refine"]["history"][-1]["step"] == 20
    assert (merged / "refine.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refined = (merged / "pytorch_lora_weights.safetensors").read_bytes()
    pipe = load_toy_pipeline()
    load_lora(pipe, merged / "pytorch_lora_weights.safetensors")  # stock diffusers loads it

    assert main([*command, "merge.refine.steps=20"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] is True
    assert main([*command, "merge.refine.steps=0"]) == 0  # another key: merged again, unrefined
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["skipped"] is False and "refine" not in summary
    assert not (merged / "refine.png").exists()  # published stage directories hold only their outputs
    assert (merged / "pytorch_lora_weights.safetensors").read_bytes() != refined


def test_adding_all_single_keeps_the_category_experts_key(repo):
    fleet = load_config(repo / "configs/toy-smoke.yaml")
    both = load_config(repo / "configs/toy-smoke.yaml", ["training.experts=both"])
    other = load_config(repo / "configs/toy-smoke.yaml", ["training.steps=21"])
    hate = next(e for e in plan_experts(fleet) if e.name == "hate")
    assert run_name(both, hate) == run_name(fleet, hate)  # a finished fleet is not retrained
    assert run_name(other, hate) != run_name(fleet, hate)  # but a training setting is in the key
    assert [e.name for e in plan_experts(both)][-1] == "all_single"
