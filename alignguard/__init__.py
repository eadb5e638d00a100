"""AlignGuard: safety alignment of text-to-image diffusion models.

The pure library: losses, LoRA, merging, data schemas, models, guards and evaluation.
It never imports ray or deepspeed (``tests/test_imports.py`` enforces it); the Ray layer
lives in the top-level ``cluster``, ``serve`` and ``jobs`` packages.
"""

__version__ = "0.1.0"
