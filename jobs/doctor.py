"""Check the cluster: ``ray job submit --working-dir . -- python jobs/doctor.py``."""

import sys

import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["doctor", *sys.argv[1:]]))
