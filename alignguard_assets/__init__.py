"""Data that ships beside the code, outside the core modules; no code lives here.

- ``reference_run/``: a finished toy-world pipeline's 7 expert LoRAs and their merged LoRA, with
  manifests and step logs (:data:`alignguard.toyworld.reference.REFERENCE_RUN` names it; published
  with ``python -m alignguard.toyworld.reference RUN_DIR``).
"""
