"""The sharded-stage abstraction: identity hashes, pending shards, sealing, conflicts (in process),
and a minimal example stage registered with one line, run end to end on the Ray Data runner."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
import stage_example
from stage_example import LengthStage, Measure

from alignguard.config import load_config
from alignguard.config.identity import expert_config_hash, identity_hash, sections_hash
from alignguard.io import RunDir, stage_status
from alignguard.stages import LocalExecutor, Pool, StageConflictError, registry, run_stage
from alignguard.stages.registry import StageEntry, sharded_stage

SMOKE = "configs/toy-smoke.yaml"
CATEGORIES = "data.categories=[hate, violence, sexual, shocking, harassment]"


def _config(repo, tmp_path, *overrides):
    return load_config(repo / SMOKE, [f"run.output_dir={tmp_path}", CATEGORIES, *overrides])


def test_identity_hash_is_canonical_and_keeps_both_historical_spellings():
    a, b = {"x": [1, 2], "y": {"b": 1, "a": "é"}}, {"y": {"a": "é", "b": 1}, "x": [1, 2]}
    assert identity_hash(a) == identity_hash(b) != identity_hash({**a, "x": [2, 1]})
    compact = json.dumps(a, sort_keys=True, separators=(",", ":"))
    assert identity_hash(a) == hashlib.sha256(compact.encode()).hexdigest()
    spaced = json.dumps(a, sort_keys=True)  # the merge and evaluation keys' spelling
    assert identity_hash(a, spaced=True) == hashlib.sha256(spaced.encode()).hexdigest()


def test_a_stage_identity_is_its_sections_and_the_run_seed(repo, tmp_path):
    config = _config(repo, tmp_path)
    assert sections_hash(config) == sections_hash(_config(repo, tmp_path, "evaluation.steps=3"))
    assert sections_hash(config) != sections_hash(_config(repo, tmp_path, "synthesis.steps=3"))
    assert sections_hash(config) != sections_hash(_config(repo, tmp_path, "run.seed=5"))


def test_the_shipped_reference_run_keeps_validating(repo):
    """Expert and merge keys are byte-identical to those the reference run was written with."""
    from alignguard.merge.stage import stage_hash
    from alignguard.toyworld.reference import REFERENCE_RUN

    config = load_config(repo / "configs/toy.yaml")
    expert = json.loads((REFERENCE_RUN / "experts" / "violence" / "manifest.json").read_text())
    assert expert["config_hash"] == expert_config_hash(config)
    merged = json.loads((REFERENCE_RUN / "merged" / "manifest.json").read_text())
    experts = {rel.split("/")[1]: sha for rel, sha in merged["inputs"].items()}
    assert merged["config_hash"] == stage_hash(config, experts)


def test_run_stage_renders_pending_shards_seals_and_reruns_as_a_no_op(repo, tmp_path):
    stage = LengthStage(_config(repo, tmp_path, "synthesis.batch_size=2"))
    first = run_stage(stage, LocalExecutor())
    assert [len(s.names) for s in first.shards] == [2, 2, 1] and first.sealed and first.failed_shards == 0
    assert sorted(row["shard_id"] for row in first.summaries) == [0, 1, 2]
    assert stage.stage_dir.read_json("lengths.json") == {"harassment": 20, "hate": 8, "sexual": 12,
                                                         "shocking": 16, "violence": 16}  # fmt: skip
    assert stage_status(stage.stage_dir, stage.key()).complete
    assert run_stage(stage, LocalExecutor()).already_complete

    # A crash after one shard's files, before the manifest: only that shard is pending.
    stage.stage_dir.remove("shards/1.json")
    stage.stage_dir.remove("manifest.json")
    resumed = run_stage(stage, LocalExecutor())
    assert [s.shard_id for s in resumed.pending] == [1] and resumed.sealed
    assert run_stage(stage, LocalExecutor(), force=True).pending == resumed.shards


def test_a_changed_identity_is_refused_an_unrelated_change_is_not(repo, tmp_path):
    run_stage(LengthStage(_config(repo, tmp_path)), LocalExecutor())
    assert run_stage(
        LengthStage(_config(repo, tmp_path, "evaluation.steps=3")), LocalExecutor()
    ).already_complete
    changed = LengthStage(_config(repo, tmp_path, "synthesis.batch_size=2"))
    with pytest.raises(
        StageConflictError, match=r"lengths outputs of a different config \(data, synthesis or"
    ):
        run_stage(changed, LocalExecutor())


class Failing(Measure):
    def __call__(self, shard):
        if "hate" in shard.names:
            raise RuntimeError("a shard that always fails")
        return super().__call__(shard)


class FlakyStage(LengthStage):
    max_failed_shards = 1

    def renderer(self) -> Pool:
        return Pool(Failing, {"scale": 2}, num_cpus=0.5)


class StrictStage(FlakyStage):
    max_failed_shards = 0


def test_failed_shards_are_counted_and_block_the_seal(repo, tmp_path):
    config = _config(repo, tmp_path, "synthesis.batch_size=2")
    run = run_stage(FlakyStage(config), LocalExecutor())
    assert (
        run.failed_shards == 1 and not run.sealed and not RunDir(tmp_path).exists("lengths", "manifest.json")
    )
    again = run_stage(LengthStage(config), LocalExecutor())  # the cause fixed: only that shard renders
    assert len(again.pending) == 1 and again.sealed
    with pytest.raises(RuntimeError, match="always fails"):  # past max_failed_shards the run fails
        run_stage(StrictStage(_config(repo, tmp_path / "other")), LocalExecutor())


def test_one_stage_list_and_the_cli_reads_it_without_ray(repo):
    from jobs.commands import pipeline

    assert registry.STAGES == pipeline.STAGES == ("synthesis", "experts", "merge", "evaluation")
    assert type(sharded_stage("synthesis", load_config(repo / SMOKE))).__name__ == "SynthesisStage"
    with pytest.raises(KeyError, match="no sharded stage 'merge'"):
        sharded_stage("merge", load_config(repo / SMOKE))
    code = (
        "import sys, jobs.commands.pipeline; print([m for m in sys.modules if m.partition('.')[0] == 'ray'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_registered_stage_runs_on_the_ray_runner(ray_cluster, repo, tmp_path, monkeypatch):
    from cluster.pipeline import run_pipeline
    from cluster.stages import run_sharded_stage

    ray_cluster.cloudpickle.register_pickle_by_value(stage_example)  # tests/ is not on the workers' path
    monkeypatch.setattr(
        registry, "REGISTRY", (*registry.REGISTRY, StageEntry("lengths", "stage_example:LengthStage"))
    )

    config = _config(repo, tmp_path, "synthesis.batch_size=2")
    summary = run_pipeline(config, stages=("lengths",), echo=lambda _: None)
    assert summary.notes["lengths"][0].startswith(
        f"{tmp_path}/lengths: rendered 3 shard(s), reused 0, failed 0"
    )
    stage = sharded_stage("lengths", config)
    assert stage_status(stage.stage_dir, stage.key()).complete
    assert stage.stage_dir.read_json("lengths.json")["harassment"] == 20

    assert run_sharded_stage(stage).already_complete  # rerun: a no-op
    stage.stage_dir.remove("shards/2.json")
    stage.stage_dir.remove("manifest.json")
    resumed = run_sharded_stage(sharded_stage("lengths", config))
    assert [s.shard_id for s in resumed.pending] == [2] and [r["names"] for r in resumed.summaries] == [1]
    with pytest.raises(StageConflictError):
        run_sharded_stage(sharded_stage("lengths", _config(repo, tmp_path, "synthesis.batch_size=3")))
