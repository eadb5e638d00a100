"""Safety experts: ``ray job submit --working-dir . -- python jobs/train_experts.py --config F [k=v ...]``."""

import sys

import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
