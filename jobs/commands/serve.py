"""``alignguard serve``: run the guarded generation service (Ray Serve) until Ctrl-C / SIGTERM.

The arguments only; starting, serving and stopping are :mod:`serve.lifecycle`'s."""

from __future__ import annotations

import argparse

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
    from serve.app import service_config
    from serve.lifecycle import check_launch, serve_until_stopped

    config = service_config(args.config, args.overrides)
    port = check_launch(config, args.port, args.address, args.detach)
    return serve_until_stopped(config, port, args.address, args.detach)
