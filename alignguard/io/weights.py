"""Weights on disk are safetensors only: nothing in the project loads pickles."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from alignguard.io.storage import RunDir


def save_tensors(
    run_dir: RunDir, rel: str, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> str:
    """Atomically write ``tensors`` as a safetensors file at ``rel``; returns its path."""
    contiguous = {name: tensor.detach().contiguous().cpu() for name, tensor in tensors.items()}
    data = save_safetensors_bytes(contiguous, metadata=dict(metadata) if metadata else None)
    return run_dir.write_bytes(rel, data)


def load_tensors(run_dir: RunDir, rel: str) -> dict[str, torch.Tensor]:
    """Read a safetensors file written by :func:`save_tensors` (or any safetensors file)."""
    return load_safetensors_bytes(run_dir.read_bytes(rel))
