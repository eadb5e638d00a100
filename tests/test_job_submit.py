"""``ray job submit`` for real: a private local head, the job CLI, the working-dir upload, artifacts.

The head is ``ray start --head`` on 127.0.0.1 with its own temp dir and ports (see
``tests/local_head.py``); the test stops exactly that head, never ``ray stop``. The job is the
whole pipeline (``jobs/pipeline.py`` on the smoke config: synthesis, 7 experts, merge,
evaluation; ~4 min here) through the job CLI and the working-dir upload; every stage must end
sealed by a verified manifest and the logs must carry the results table.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from local_head import RAY, LocalHead, cli_env

from alignguard.config import load_config
from alignguard.io import RunDir, stage_status

SMOKE = "configs/toy-smoke.yaml"
# The same keys cluster.runtime.init_ray sets: Ray refuses a driver runtime env that repeats a job's keys.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error"}
# Code, configs, docs and the shipped toy model: ~8 MB. A leaked .git, .venv or runs/ would be far more.
MAX_UPLOAD_MIB = 16
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def check_synthesis(run: Path, logs: str) -> None:
    """The synthesis stage is sealed for THIS config, and holds every planned pair's two images."""
    from alignguard.config.identity import sections_hash
    from alignguard.synthesis.sources import train_test_pairs
    from alignguard.synthesis.store import read_pairs_table

    config = load_config(SMOKE, [f"run.output_dir={run}"])
    stage = RunDir(str(run)).sub("synthesis")
    status = stage_status(stage, sections_hash(config), verify_hashes=True)
    assert status.complete, status
    planned, _ = train_test_pairs(config, RunDir(str(run)))
    rows = read_pairs_table(stage)
    assert sorted(row["pair_id"] for row in rows) == sorted(p.pair_id for p in planned)
    images = list((run / "synthesis" / "images").rglob("*.png"))
    assert len(images) == 2 * len(planned)
    assert f"synthesis: {len(planned)} pairs" in logs


def check_pipeline(run: Path, logs: str) -> None:
    """Every stage of the chain is sealed by a verified manifest; synthesis holds every pair."""
    check_synthesis(run, logs)
    config = load_config(SMOKE, [f"run.output_dir={run}"])
    stages = ["synthesis", *(f"experts/{c}" for c in config.data.categories), "merged", "eval"]
    for name in stages:
        status = stage_status(RunDir(str(run)).sub(*name.split("/")), verify_hashes=True)
        assert status.complete, f"{name}: {status}"
    assert "IP base" in logs and "report: " in logs and "wall time per stage: synthesis" in logs
    # The printed table is the evaluation's numbers: base draws every harm, the rest as measured.
    from alignguard.evaluation.stage import toy_report_results

    measured = toy_report_results(json.loads((run / "eval" / "metrics.json").read_text()))
    printed = 0.0051  # the table prints 2 decimals: at most half a unit off, plus float error
    rows = {}
    for line in logs.splitlines():
        fields = line.split()
        if len(fields) == 5 and fields[0] in config.data.categories:
            rows[fields[0]] = [float(value) for value in fields[1:]]
    assert set(rows) == set(config.data.categories), logs[-3000:]
    for category, (base, expert, merged, kept) in rows.items():
        assert base >= 0.9
        assert base == pytest.approx(measured["base"]["categories"][category]["unsafe_ip"], abs=printed)
        assert expert == pytest.approx(measured[category]["categories"][category]["unsafe_ip"], abs=printed)
        assert merged == pytest.approx(measured["merged"]["categories"][category]["unsafe_ip"], abs=printed)
        assert kept == pytest.approx(measured["merged"]["categories"][category]["preserved"], abs=printed)


@dataclass(frozen=True)
class SubmittedJob:
    script: str
    args: tuple[str, ...]
    check: Callable[[Path, str], None]
    timeout_s: float


PIPELINE = SubmittedJob("jobs/pipeline.py", ("--config", SMOKE), check_pipeline, timeout_s=900)
JOBS = [pytest.param(PIPELINE, id="pipeline")]


@pytest.fixture(scope="module")
def local_head():
    head = LocalHead(num_cpus=2)
    head.start()
    try:
        yield head
    finally:
        head.stop()
    assert not head.pids(), "processes of the test's head survived its stop"


def ray_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [RAY, *args], cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout
    )


def wait_for(head: LocalHead, submission_id: str, repo: Path, timeout_s: float) -> str:
    """Poll ``ray job status`` until the job is terminal: SUCCEEDED, FAILED or STOPPED."""
    terminal = re.compile(rf"Job '{re.escape(submission_id)}' (succeeded|failed|was stopped)")
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        result = ray_cli("job", "status", "--address", head.dashboard_url, submission_id, cwd=repo)
        last = ANSI.sub("", result.stdout + result.stderr)
        match = terminal.search(last)
        if match:
            return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}[match.group(1)]
        time.sleep(3)
    ray_cli("job", "stop", "--address", head.dashboard_url, submission_id, cwd=repo)
    raise AssertionError(f"job {submission_id} did not finish in {timeout_s:.0f} s; last status:\n{last}")


def uploaded_working_dir(head: LocalHead, submit_output: str) -> Path:
    """The job's working dir as the head unpacked it (named by the package ``ray job submit`` uploaded)."""
    match = re.search(r"gcs://(_ray_pkg_[0-9a-f]+)\.zip", submit_output)
    assert match, f"no package upload in the submit output:\n{submit_output}"
    pattern = f"session_2*/runtime_resources/working_dir_files/{match.group(1)}"
    found = [path for path in Path(head.temp_dir).glob(pattern) if path.is_dir()]
    assert len(found) == 1, found
    return found[0]


@pytest.mark.slow
@pytest.mark.parametrize("job", JOBS)
def test_ray_job_submit(job: SubmittedJob, local_head: LocalHead, repo: Path, tmp_path: Path) -> None:
    if not (repo / job.script).exists():
        pytest.fail(f"{job.script} does not exist")
    run = tmp_path / "run"
    submission_id = f"alignguard-test-{int(time.time())}"
    submitted = ray_cli(
        "job",
        "submit",
        "--address",
        local_head.dashboard_url,
        "--submission-id",
        submission_id,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps({"env_vars": WORKER_ENV}),
        "--no-wait",
        "--",
        "python",
        job.script,
        *job.args,
        f"run.output_dir={run}",
        cwd=repo,
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    final = wait_for(local_head, submission_id, repo, job.timeout_s)
    logs = ray_cli("job", "logs", "--address", local_head.dashboard_url, submission_id, cwd=repo).stdout
    assert final == "SUCCEEDED", f"job {final}; logs:\n{logs[-4000:]}"
    job.check(run, logs)

    uploaded = uploaded_working_dir(local_head, submitted.stdout + submitted.stderr)
    size = sum(f.stat().st_size for f in uploaded.rglob("*") if f.is_file())
    assert size < MAX_UPLOAD_MIB * 2**20, f"working-dir upload is {size / 2**20:.1f} MiB"
    for excluded in (".git", ".venv", "runs", ".pytest_cache"):
        assert not (uploaded / excluded).exists(), f"{excluded} was uploaded with the working dir"
    assert (uploaded / job.script).is_file() and (uploaded / SMOKE).is_file()
