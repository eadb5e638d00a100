"""Where the shipped toy model lives."""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = Path(__file__).resolve().parent / "model"


def shipped_model_dir() -> Path:
    """The toy model shipped with the package (diffusers SD layout).

    Raises:
        FileNotFoundError: it has not been built; ``alignguard toyworld build`` builds it.
    """
    if not (MODEL_DIR / "model_index.json").exists():
        raise FileNotFoundError(
            f"the toy model is missing at {MODEL_DIR}; build it with `alignguard toyworld build`"
        )
    return MODEL_DIR
