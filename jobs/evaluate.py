"""Evaluate a run: ``ray job submit --working-dir . -- python jobs/evaluate.py --config F [overrides]``."""

import sys

import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
