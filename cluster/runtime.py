"""Connecting to Ray the same way on a laptop and on a cluster."""

from __future__ import annotations

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
    env_vars = {key: os.environ.get(key, value) for key, value in DEFAULT_WORKER_ENV.items()}
    ray.init(
        address=address or os.environ.get("RAY_ADDRESS"),
        runtime_env={"env_vars": env_vars},
        log_to_driver=log_to_driver,
        configure_logging=True,
        logging_level="WARNING",
    )
