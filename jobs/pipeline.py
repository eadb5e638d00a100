"""The whole pipeline: ``ray job submit --working-dir . -- python jobs/pipeline.py --config F [k=v ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
