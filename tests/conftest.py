"""Shared fixtures. Ray-based tests use one session-scoped local cluster (see ``ray_cluster``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
COPROV2_CSV = SHARED_DATA / "CoProv2_train.csv"

# One torch thread per process: stable on 2-core machines (two threads were 5-30x slower on a busy one).
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def coprov2_csv() -> Path:
    if not COPROV2_CSV.exists():
        pytest.skip(f"the CoProV2 training CSV is not at {COPROV2_CSV} (it lives in ../shared/data)")
    return COPROV2_CSV


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance for the whole session (``ray.init`` costs ~10 s here).

    ``address="local"`` always starts a fresh instance, never one a developer started with
    ``ray start``; ``ray.shutdown()`` then stops exactly what this fixture started.
    """
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address="local",
            num_cpus=4,  # logical: lets fractional-CPU workers and drivers co-schedule on 2 cores
            include_dashboard=False,
            runtime_env={
                "env_vars": {
                    "OMP_NUM_THREADS": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                    "TRANSFORMERS_VERBOSITY": "error",
                }
            },
            logging_level="WARNING",
        )
        # A stage asking for resources the test cluster lacks must fail, not hang forever.
        ray.data.DataContext.get_current().execution_no_progress_timeout_s = 120
    yield ray
    if started:
        ray.shutdown()
