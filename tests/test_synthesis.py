"""Pair synthesis: plan, renderer, shard store, and the Ray Data stage end to end."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from alignguard.config import load_config
from alignguard.data.schema import PromptPair
from alignguard.data.taxonomy import CATEGORIES
from alignguard.generation import generate
from alignguard.io import RunDir
from alignguard.io.manifest import stage_status
from alignguard.models import tiny_sd_pipeline, tiny_sdxl_pipeline
from alignguard.synthesis.plan import Shard, pair_seed, plan_shards
from alignguard.synthesis.render import PairRenderer
from alignguard.synthesis.store import (
    ShardValidationError,
    load_pair_cache,
    read_pairs_table,
    shard_is_complete,
    write_shard,
)
from cluster.synthesis import run_synthesis

PAIRS = [PromptPair(f"p{i:02d}", f"a bloody bar {i}", f"a painted bar {i}", ("violence",)) for i in range(10)]


def test_plan_is_deterministic_and_sharded_by_id():
    shards = plan_shards(list(reversed(PAIRS)), run_seed=3, shard_size=4)
    assert [len(s.pairs) for s in shards] == [4, 4, 2]
    assert [p.pair_id for s in shards for p in s.pairs] == sorted(p.pair_id for p in PAIRS)
    assert shards[0].pairs[0].seed == pair_seed(3, "p00") != pair_seed(4, "p00")
    assert [s.fingerprint() for s in shards] == [s.fingerprint() for s in plan_shards(PAIRS, 3, 4)]
    assert Shard.from_json(shards[1].to_json()) == shards[1]
    with pytest.raises(ValueError, match="duplicate pair ids"):
        plan_shards([*PAIRS, PAIRS[0]], 0, 4)


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd")
    tiny_sd_pipeline(seed=0).save_pretrained(path)
    return str(path)


def _renderer(path: str, family: str = "sd15") -> PairRenderer:
    from alignguard.config.schema import ModelSection

    model = ModelSection(family=family, path=path, device="cpu", resolution=32)
    return PairRenderer(model, steps=2, guidance=5.0, cache_latents=True)


def test_renderer_uses_the_same_seed_for_both_images_and_caches_conditioning(tiny_sd_dir):
    renderer = _renderer(tiny_sd_dir)
    out = renderer.render(["a red cat", "a gun"], ["a blue cat", "a flower"], [11, 12])
    assert out["unsafe_images"].shape == (2, 32, 32, 3) and out["unsafe_images"].dtype == np.uint8
    alone = generate(renderer.pipe, ["a blue cat"], [11], steps=2, guidance=5.0)
    np.testing.assert_allclose(out["safe_images"][0] / 255.0, alone[0], atol=1 / 255)
    assert out["latents_unsafe"].shape == (2, 4, 16, 16)
    assert out["text_unsafe"].shape == (2, 16, 32) and out["empty_text"].shape == (1, 16, 32)
    with torch.no_grad():
        expected, _ = renderer.pipe.encode_prompt(["a gun"], "cpu", 1, False)
    np.testing.assert_allclose(out["text_unsafe"][1], expected[0].numpy(), atol=1e-6)


def test_renderer_caches_sdxl_pooled_embeddings_and_time_ids(tmp_path):
    tiny_sdxl_pipeline(seed=0).save_pretrained(tmp_path)
    out = _renderer(str(tmp_path), family="sdxl").render(["a red cat"], ["a blue cat"], [5])
    assert out["text_safe"].shape == (1, 16, 64)  # both encoders' hidden states
    assert out["pooled_safe"].shape == (1, 32) and out["empty_pooled"].shape == (1, 32)
    assert out["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]]


def test_shard_store_writes_marker_last_and_detects_damage(tiny_sd_dir, tmp_path):
    stage = RunDir(tmp_path / "synthesis")
    shard = plan_shards(PAIRS[:3], run_seed=0, shard_size=3)[0]
    rendered = _renderer(tiny_sd_dir).render(
        [p.unsafe_prompt for p in shard.pairs],
        [p.safe_prompt for p in shard.pairs],
        [p.seed for p in shard.pairs],
    )
    assert not shard_is_complete(stage, shard)
    summary = write_shard(stage, shard, rendered, "webp", "float16", "tiny")
    assert summary["pairs"] == 3 and shard_is_complete(stage, shard)
    assert len(stage.listdir("images", "violence")) == 6
    other_plan = plan_shards(PAIRS[:3], run_seed=1, shard_size=3)[0]  # other seeds: not the same work
    assert not shard_is_complete(stage, other_plan)
    stage.write_bytes("images/violence/p01-safe.webp", b"truncated")
    assert not shard_is_complete(stage, shard)
    bad = {**rendered, "latents_safe": np.full_like(rendered["latents_safe"], np.nan)}
    with pytest.raises(ShardValidationError, match="non-finite"):
        write_shard(stage, shard, bad, "png", "float32", "tiny")
    with pytest.raises(ShardValidationError, match="want uint8"):
        write_shard(
            stage, shard, {**rendered, "safe_images": rendered["safe_images"][:2]}, "png", "float32", "tiny"
        )


@pytest.mark.slow
def test_toy_smoke_synthesis_covers_every_category_and_reruns_as_a_no_op(ray_cluster, repo, tmp_path):
    config = load_config(repo / "configs/toy-smoke.yaml", [f"run.output_dir={tmp_path}"])
    first = run_synthesis(config)
    assert first.failed_shards == 0 and first.rendered_pairs == first.pairs > 0
    assert all(first.per_category[c] > 0 for c in CATEGORIES)
    stage = RunDir(tmp_path / "synthesis")
    assert stage_status(stage).complete
    rows = read_pairs_table(stage)
    assert len({r["pair_id"] for r in rows}) == len(rows) == first.pairs
    cache = load_pair_cache(stage)
    assert cache.pair_ids == [r["pair_id"] for r in rows]
    assert cache.tensors["latents_unsafe"].shape == (first.pairs, 4, 8, 8)
    assert np.isfinite(cache.tensors["text_safe"]).all()
    assert len(cache.select("hate")) == first.per_category["hate"]

    second = run_synthesis(config)
    assert second.rendered_pairs == 0 and second.pairs == first.pairs
    assert read_pairs_table(stage) == rows


@pytest.mark.slow
def test_a_killed_renderer_costs_only_its_shard(ray_cluster, repo, tmp_path):
    from raytools import kill_workers

    overrides = [
        f"run.output_dir={tmp_path}",
        "synthesis.pairs_per_concept=8",
        "synthesis.batch_size=4",
        "synthesis.steps=40",
        "data.categories=[hate, violence, sexual]",
    ]
    config = load_config(repo / "configs/toy-smoke.yaml", overrides)
    stage = RunDir(tmp_path / "synthesis")
    outcome: dict = {}
    worker = threading.Thread(target=lambda: outcome.setdefault("summary", _run_or_error(config)))
    worker.start()
    killed: list[int] = []
    done_at_kill = 0
    deadline = time.monotonic() + 120
    while not killed and time.monotonic() < deadline and worker.is_alive():
        done_at_kill = len(stage.listdir("shards"))
        if done_at_kill:  # mid-run: some shards are done, others are not
            killed = kill_workers("RenderShards")
        time.sleep(0.1)
    worker.join(timeout=300)
    assert killed, "no renderer process was found to kill"
    assert done_at_kill < len(_plan(config)), "the kill came after the last shard: it tested nothing"
    summary = outcome["summary"]
    print(f"killed {killed}; first run: {summary if isinstance(summary, Exception) else summary.lines()}")
    if isinstance(summary, Exception) or summary.failed_shards:  # the job died: rerun resumes
        summary = run_synthesis(config)
    assert summary.failed_shards == 0
    rows = read_pairs_table(stage)
    expected = {p.pair_id for shard in _plan(config) for p in shard.pairs}
    assert [r["pair_id"] for r in rows] == sorted(expected)  # exactly the plan, none duplicated
    images = [name for category in stage.listdir("images") for name in stage.listdir("images", category)]
    assert len(images) == 2 * len(expected)


def _run_or_error(config):
    try:
        return run_synthesis(config)
    except Exception as exc:
        return exc


def _plan(config):
    from alignguard.synthesis.sources import train_test_pairs

    train, _ = train_test_pairs(config, RunDir(config.run.output_dir))
    return plan_shards(train, config.run.seed, config.synthesis.batch_size)


@pytest.mark.slow
def test_pickapic_export_then_import_roundtrip(ray_cluster, repo, tmp_path):
    import pyarrow.parquet as pq

    from cluster.synthesis import import_pickapic_stage
    from jobs.cli import main

    source = tmp_path / "source"
    overrides = [f"run.output_dir={source}", "data.categories=[violence]"]
    config = load_config(repo / "configs/toy-smoke.yaml", overrides)
    summary = run_synthesis(config)
    table = tmp_path / "pairs.parquet"
    assert (
        main(
            [
                "data",
                "export-pickapic",
                "--config",
                str(repo / "configs/toy-smoke.yaml"),
                *overrides,
                "--out",
                str(table),
            ]
        )
        == 0
    )
    rows = pq.read_table(table).to_pylist()
    assert len(rows) == 2 * summary.pairs and {r["label_0"] for r in rows} == {1}
    pairs = read_pairs_table(RunDir(source / "synthesis"))
    assert {r["caption"] for r in rows} == {p["unsafe_prompt"] for p in pairs} | {
        p["safe_prompt"] for p in pairs
    }

    imported = load_config(repo / "configs/toy-smoke.yaml", [f"run.output_dir={tmp_path / 'imported'}"])
    result = import_pickapic_stage(imported, str(table))
    assert result.pairs == len(rows) and result.per_category["violence"] == len(rows)
    imported_stage = RunDir(tmp_path / "imported" / "synthesis")
    assert stage_status(imported_stage).complete
    assert len(load_pair_cache(imported_stage)) == len(rows)
    # The preferred image of the first row is the source pair's safe image (up to JPEG at quality 95).
    first_import = read_pairs_table(imported_stage)[0]
    source_pair = next(
        r for r in read_pairs_table(RunDir(source / "synthesis")) if r["pair_id"] == rows[0]["pair_id"]
    )
    assert first_import["unsafe_prompt"] == first_import["safe_prompt"] == rows[0]["caption"]
    assert (
        np.abs(
            _image(imported_stage, first_import["safe_image"])
            - _image(RunDir(source / "synthesis"), source_pair["safe_image"])
        ).mean()
        < 0.02
    )


def _image(stage: RunDir, rel: str) -> np.ndarray:
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(stage.read_bytes(rel))), dtype=np.float32) / 255.0
