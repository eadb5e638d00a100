"""Starting and stopping the service on Ray: what ``alignguard serve`` (and ``jobs/deploy.py``) do
between parsing their arguments and exiting.

- :func:`check_launch`: refuse, before Ray starts, what would fail later or crash-loop the
  replicas (a port in Ray's worker range, ``--detach`` on a private instance, an unset API key,
  a run directory whose adapters do not validate); warns about base-only mode;
- :func:`serve_until_stopped`: deploy (``serve.run`` returns once every replica is up), then keep
  serving in the foreground until Ctrl-C or SIGTERM, or return at once with ``detach``;
- :func:`shutdown`: delete the app (replicas drain their in-flight requests), stop Serve if
  nothing else runs on it and Ray if this process started it; bounded in time.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from alignguard.config import ConfigError
from alignguard.config.schema import ExperimentConfig
from serve.app import RAY_WORKER_PORTS, build_application, http_options

SHUTDOWN_SLACK_S = 15.0  # beyond serve.graceful_shutdown_timeout_s, for Serve's own bookkeeping


class _Stop(Exception):
    """SIGTERM arrived: shut down gracefully, like Ctrl-C."""


def check_launch(config: ExperimentConfig, port: int | None, address: str | None, detach: bool) -> int:
    """The HTTP port to serve on; raises :class:`ConfigError` on what cannot work."""
    port = port or config.serve.port
    if port in RAY_WORKER_PORTS:
        raise ConfigError(f"port {port} lies in Ray's worker port range 10002-19999; choose another")
    if detach and address == "local":
        raise ConfigError("--detach needs a running cluster (--address or $RAY_ADDRESS), not a private one")
    _preflight(config, detach)
    return port


def _preflight(config: ExperimentConfig, detach: bool) -> None:
    """Fail here, with a clear message, on what would otherwise crash-loop the replicas."""
    from serve.adapters import AdapterCatalog, AdapterError

    name = config.serve.api_key_env
    if name and not os.environ.get(name) and not detach:
        raise ConfigError(f"serve.api_key_env is {name!r} but ${name} is not set; export it first")
    try:
        catalog = AdapterCatalog.discover(config.run.output_dir, config.serve)
    except AdapterError as exc:
        raise ConfigError(str(exc)) from None
    if catalog.base_only:
        print(f"warning: BASE-ONLY mode (no safety LoRA): {catalog.default_reason}", file=sys.stderr)


def service_url(config: ExperimentConfig, port: int) -> str:
    return f"http://{config.serve.host}:{port}{config.serve.route_prefix.rstrip('/')}"


def deploy(config: ExperimentConfig, port: int) -> None:
    """Start Serve's HTTP proxy on ``port`` and run the application (returns once it is running;
    raises ``RuntimeError`` with the failing constructor's error when a deployment cannot start)."""
    from ray import serve

    serve.start(http_options=http_options(config, port))
    where = f"model {config.model.family}, adapters from {config.run.output_dir}"
    print(f"deploying {config.serve.app_name!r} ({where}) ...")
    serve.run(
        build_application(config, forward_api_key=True),
        name=config.serve.app_name,
        route_prefix=config.serve.route_prefix,
    )


def serve_until_stopped(config: ExperimentConfig, port: int, address: str | None, detach: bool) -> int:
    """Deploy on the cluster at ``address`` (``local``: a private instance) and serve until Ctrl-C or
    SIGTERM (``detach``: return once deployed). The exit code: 0, or 1 when the service failed to start."""
    import ray

    from cluster.runtime import init_ray

    started_ray = not ray.is_initialized()
    init_ray(address)
    name, url = config.serve.app_name, service_url(config, port)
    timeout_s = config.serve.graceful_shutdown_timeout_s + SHUTDOWN_SLACK_S
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        deploy(config, port)
        print(f"serving {url}/v1/generate  (docs {url}/docs, health {url}/healthz)", flush=True)
        if detach:
            print(f"detached; stop it with: serve shutdown, or serve.delete({name!r})")
            return 0
        print("Ctrl-C or SIGTERM stops it gracefully", flush=True)
        while True:
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping: draining in-flight requests ...", file=sys.stderr, flush=True)
        return shutdown(name, started_ray, timeout_s)
    except RuntimeError as exc:  # a deployment that failed to start (its constructor's error is in the text)
        print(f"error: the service failed to start: {str(exc).strip()[-2000:]}", file=sys.stderr)
        shutdown(name, started_ray, timeout_s)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_stop(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Stop()


def shutdown(name: str, started_ray: bool, timeout_s: float) -> int:
    """Delete the app (replicas finish in-flight requests), stop Serve if nothing else runs on it,
    then Ray if this process started it. Bounded: a dead cluster cannot make it hang."""
    import ray

    start = time.perf_counter()
    worker = threading.Thread(target=_delete_app, args=(name,), daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        print(f"warning: Serve did not stop within {timeout_s:.0f} s; leaving it", file=sys.stderr)
    if started_ray:
        ray.shutdown()
    print(f"stopped in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    return 0


def _delete_app(name: str) -> None:
    from ray import serve

    try:
        serve.delete(name)
        if not serve.status().applications:
            serve.shutdown()
    except Exception as exc:  # the cluster may already be gone (e.g. the whole process group was signalled)
        print(f"warning: could not stop Serve cleanly: {exc}", file=sys.stderr)
