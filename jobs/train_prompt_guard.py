"""Train the prompt guard's head: ``ray job submit --working-dir . -- python jobs/train_prompt_guard.py CSV``.

Same arguments as ``alignguard guard train``. A single-process CPU job (about 5 minutes on one
core, most of it embedding 31k prompts once; the embeddings are cached); Ray only places it.
"""

import sys

import _bootstrap  # noqa: F401  (puts the repository root on sys.path)

from jobs.cli import main

if __name__ == "__main__":
    sys.exit(main(["guard", "train", *sys.argv[1:]]))
