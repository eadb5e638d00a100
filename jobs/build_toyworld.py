"""Train the toy model: ``ray job submit --working-dir . -- python jobs/build_toyworld.py [--out DIR]``.

Same arguments as ``alignguard toyworld build``. It is a single-process CPU job (about 15 minutes
on 2 cores); Ray only places it.
"""

import sys

import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["toyworld", "build", *sys.argv[1:]]))
