"""Connecting to Ray the same way on a laptop and on a cluster."""

from __future__ import annotations

import json
import os

import ray

# Workers run one torch thread unless told otherwise: on small CPU machines oversubscribed
# threads were 5-30x slower, and on GPU nodes the CPU threads only feed the device.
DEFAULT_WORKER_ENV = {
    "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    # transformers warns at import that torchvision is absent (we never need it): keep logs readable.
    "TRANSFORMERS_VERBOSITY": "error",
}


def init_ray(address: str | None = None, *, log_to_driver: bool = True) -> None:
    """Connect to the cluster in ``address`` / ``$RAY_ADDRESS``, or start a local instance.

    Under ``ray job submit`` the job's driver is already attached to its cluster through
    ``RAY_ADDRESS``; on a laptop a local instance starts on the fly. No resource arguments:
    the cluster (or the machine) says what it has.
    """
    if ray.is_initialized():
        return
    # Under `ray job submit --runtime-env-json '{"env_vars": ...}'` Ray refuses a ray.init runtime
    # env that sets any of the same keys: the job's values win, so leave those keys out.
    job_env = _submitted_job_env_vars()
    env_vars = {
        key: os.environ.get(key, value) for key, value in DEFAULT_WORKER_ENV.items() if key not in job_env
    }
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS"),
        runtime_env={"env_vars": env_vars},
        log_to_driver=log_to_driver,
        configure_logging=True,
        logging_level="WARNING",
    )


def _submitted_job_env_vars() -> dict[str, str]:
    """The ``env_vars`` of the runtime env ``ray job submit`` gave this driver (empty otherwise)."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return {}
    runtime_env = json.loads(raw).get("runtime_env") or {}
    return dict(runtime_env.get("env_vars") or {})
