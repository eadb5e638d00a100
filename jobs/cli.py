"""The ``alignguard`` command line.

Every job command takes ``--config FILE`` and ``key.sub=value`` overrides, and is also a script
under ``jobs/`` for ``ray job submit``. Each command lives in ``jobs/commands/`` and imports its
heavy dependencies lazily, so ``alignguard --help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from alignguard import __version__

EXIT_USAGE = 2

DESCRIPTION = """\
AlignGuard: safety alignment of text-to-image models (DPO safety experts + Co-Merge) on Ray.

Each job command reads an experiment YAML (configs/*.yaml) and accepts overrides, e.g.
  alignguard config --config configs/sd15.yaml training.lora.rank=8
and every config key explains itself:
  alignguard config --explain training.lora.rank
"""


def _registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    from jobs.commands import (
        cluster,
        config,
        data,
        doctor,
        evaluate,
        guard,
        merge,
        pipeline,
        serve,
        synthesize,
        toyworld,
        train,
    )

    return [
        pipeline.register,
        config.register,
        data.register,
        synthesize.register,
        train.register,
        toyworld.register,
        merge.register,
        evaluate.register,
        guard.register,
        serve.register,
        doctor.register,
        cluster.register,
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignguard", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"alignguard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; user errors print ``error: ...`` and exit 2 instead of a traceback."""
    from alignguard.config import ConfigError
    from alignguard.data import DataFormatError
    from alignguard.io import StorageError
    from alignguard.stages import StageConflictError

    args = build_parser().parse_args(argv)
    # transformers warns at import that torchvision is absent (never needed here): keep output readable.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    try:
        return int(args.handler(args) or 0)
    except (ConfigError, DataFormatError, StorageError, StageConflictError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
