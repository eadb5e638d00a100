"""Deploy the guarded generation service: ``ray job submit --working-dir . -- python jobs/deploy.py
--config configs/sd15.yaml --detach`` (or run it locally in the foreground, like ``alignguard serve``)."""

import sys

import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
