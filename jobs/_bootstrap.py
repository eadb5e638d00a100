"""Make ``python jobs/<job>.py`` work from a checkout or a Ray ``--working-dir`` upload.

Run as a script, a job's ``sys.path[0]`` is ``jobs/`` itself; the repository root (which holds
``alignguard``, ``cluster`` and ``serve``) must come first so the uploaded code is the code
that runs, even where an older ``alignguard`` is installed in the image.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
