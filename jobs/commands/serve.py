"""``alignguard serve``: run the guarded generation service (Ray Serve) until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from jobs.commands._common import positive_int

EPILOG = """\
examples:
  alignguard serve --config configs/toy.yaml                  # toy model, http://127.0.0.1:8000
  alignguard serve --config configs/toy.yaml --port 8123 serve.allow_no_adapter=true
  alignguard serve --check serve/config.yaml                  # validate a Serve config file
  ray job submit --working-dir . -- python jobs/deploy.py --config configs/sd15.yaml --detach

The adapters come from run.output_dir: merged/ (the default, fused at start-up) and
experts/<category>/; without merged/ the service runs base-only and says so in /healthz.
"""


class _Stop(Exception):
    """SIGTERM arrived: shut down gracefully, like Ctrl-C."""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="serve guarded generation over HTTP (Ray Serve)",
        description="Start the AlignGuard HTTP service (FastAPI ingress + batched, multiplexed generator "
        "on Ray Serve) from an experiment config, and stop it gracefully on Ctrl-C or SIGTERM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="experiment YAML, e.g. configs/toy.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key.sub=value",
        help="config overrides, e.g. serve.allow_no_adapter=true",
    )
    parser.add_argument("--port", type=positive_int, help="HTTP port (default: serve.port)")
    parser.add_argument(
        "--address",
        help="Ray cluster address; 'local' starts a private instance (default: $RAY_ADDRESS / auto)",
    )
    parser.add_argument(
        "--detach",
        action="store_true",
        help="deploy onto a running cluster and return (no foreground server)",
    )
    parser.add_argument(
        "--check", metavar="SERVE_YAML", help="only validate a Serve config file (e.g. serve/config.yaml)"
    )
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from alignguard.config import ConfigError

    if args.check:
        from serve.validate import validate_serve_config

        validate_serve_config(args.check)
        print(
            f"{args.check}: OK (Ray's ServeDeploySchema, no ignored keys, args and experiment config valid)"
        )
        return 0
    if not args.config:
        raise ConfigError("--config FILE is required (or --check SERVE_YAML)")
    from serve.app import RAY_WORKER_PORTS, service_config

    config = service_config(args.config, args.overrides)
    port = args.port or config.serve.port
    if port in RAY_WORKER_PORTS:
        raise ConfigError(f"port {port} lies in Ray's worker port range 10002-19999; choose another")
    if args.detach and args.address == "local":
        raise ConfigError("--detach needs a running cluster (--address or $RAY_ADDRESS), not a private one")
    _preflight(config, args.detach)
    return _serve(config, port, args.address, args.detach)


def _preflight(config, detach: bool) -> None:
    """Fail here, with a clear message, on what would otherwise crash-loop the replicas."""
    import os

    from alignguard.config import ConfigError
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


def _serve(config, port: int, address: str | None, detach: bool) -> int:
    import ray
    from ray import serve

    from cluster.runtime import init_ray
    from serve.app import build_application, http_options

    started_ray = not ray.is_initialized()
    init_ray(address)
    name = config.serve.app_name
    url = f"http://{config.serve.host}:{port}{config.serve.route_prefix.rstrip('/')}"
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        serve.start(http_options=http_options(config, port))
        print(f"deploying {name!r} (model {config.model.family}, adapters from {config.run.output_dir}) ...")
        serve.run(
            build_application(config, forward_api_key=True), name=name, route_prefix=config.serve.route_prefix
        )
        print(f"serving {url}/v1/generate  (docs {url}/docs, health {url}/healthz)", flush=True)
        if detach:
            print(f"detached; stop it with: serve shutdown, or serve.delete({name!r})")
            return 0
        print("Ctrl-C or SIGTERM stops it gracefully", flush=True)
        while True:
            time.sleep(1.0)
    except (KeyboardInterrupt, _Stop):
        print("\nstopping: draining in-flight requests ...", file=sys.stderr, flush=True)
        return _shutdown(name, started_ray, config.serve.graceful_shutdown_timeout_s + 15)
    except RuntimeError as exc:  # a deployment that failed to start (its constructor's error is in the text)
        print(f"error: the service failed to start: {str(exc).strip()[-2000:]}", file=sys.stderr)
        _shutdown(name, started_ray, config.serve.graceful_shutdown_timeout_s + 15)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_stop(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise _Stop()


def _shutdown(name: str, started_ray: bool, timeout_s: float) -> int:
    """Delete the app (replicas finish in-flight requests), stop Serve if nothing else runs on it,
    then Ray if this process started it. Bounded: a dead cluster cannot make it hang."""
    import threading

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
