"""Training the prompt guard's head on CoProV2 (pure library; the driver is jobs/train_prompt_guard.py).

Each pair gives two examples: the unsafe prompt (targets: unsafe=1 and its categories) and its safe
twin (all targets 0, i.e. benign). Embeddings are computed once and cached on disk keyed by the
texts and the embedding model, so re-training (other seeds, sizes) skips the slow part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from alignguard.data.schema import PromptPair
from alignguard.data.taxonomy import CATEGORIES
from alignguard.guards.calibration import calibrate, evaluate
from alignguard.guards.head import LABELS, HeadBundle, PromptGuardHead
from alignguard.guards.split import SPLITS, GuardSplit, block_split, leakage, random_pair_split


@dataclass(frozen=True)
class Examples:
    texts: list[str]
    targets: torch.Tensor  # [N, 8] float {0, 1}: unsafe, then the 7 categories


def pair_examples(pairs: Sequence[PromptPair]) -> Examples:
    """Two examples per pair: unsafe prompt -> (1, its categories), safe twin -> all zeros."""
    texts: list[str] = []
    rows: list[list[float]] = []
    for pair in pairs:
        texts.append(pair.unsafe_prompt)
        rows.append([1.0] + [float(c in pair.categories) for c in CATEGORIES])
        texts.append(pair.safe_prompt)
        rows.append([0.0] * len(LABELS))
    return Examples(texts, torch.tensor(rows).reshape(-1, len(LABELS)))


def embed_cached(
    texts: Sequence[str],
    embed: Callable[[Sequence[str]], torch.Tensor],
    cache_dir: str | Path | None,
    model_key: str,
) -> torch.Tensor:
    """``embed(texts)`` [N, D], read from / written to ``cache_dir`` (keyed by texts and model)."""
    if cache_dir is None:
        return embed(texts)
    digest = hashlib.sha256(model_key.encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / f"embeddings-{digest.hexdigest()[:24]}.safetensors"
    if path.exists():
        cached = load_file(str(path))["embeddings"]
        if len(cached) == len(texts):
            return cached
    vectors = embed(texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"embeddings": vectors.contiguous()}, str(tmp))
    tmp.replace(path)
    return vectors


class EmbeddingTable:
    """Embeddings of a fixed set of texts, looked up by text: ``table(texts) -> [N, D]``."""

    def __init__(self, texts: Sequence[str], vectors: torch.Tensor) -> None:
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        self.index = {text: row for row, text in enumerate(texts)}
        self.vectors = vectors

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.vectors[torch.tensor([self.index[text] for text in texts], dtype=torch.long)]


@dataclass(frozen=True)
class HeadTraining:
    hidden: int = 256
    dropout: float = 0.1
    epochs: int = 40
    batch_size: int = 256
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0


def train_head(
    embeddings: torch.Tensor,
    targets: torch.Tensor,
    schedule: HeadTraining = HeadTraining(),
    on_epoch: Callable[[int, float], None] | None = None,
) -> PromptGuardHead:
    """Fit a :class:`PromptGuardHead` to ``embeddings`` [N, 384] and ``targets`` [N, 8] (BCE).

    Category outputs learn from unsafe prompts only (a benign prompt has no category to teach),
    so a category score reads "if this prompt is unsafe, how likely is it category c"; the unsafe
    output learns from every prompt. Deterministic for a given seed on CPU.
    """
    generator = torch.Generator().manual_seed(schedule.seed)
    torch.manual_seed(schedule.seed)
    head = PromptGuardHead(hidden=schedule.hidden, dropout=schedule.dropout, in_dim=embeddings.shape[1])
    optimizer = torch.optim.AdamW(
        head.parameters(), lr=schedule.learning_rate, weight_decay=schedule.weight_decay
    )
    steps = schedule.epochs * ((len(embeddings) + schedule.batch_size - 1) // schedule.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=schedule.learning_rate, total_steps=steps
    )
    head.train()
    for epoch in range(schedule.epochs):
        order = torch.randperm(len(embeddings), generator=generator)
        total = 0.0
        for start in range(0, len(order), schedule.batch_size):
            index = order[start : start + schedule.batch_size]
            loss = head_loss(head(embeddings[index]), targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(index)
        if on_epoch is not None:
            on_epoch(epoch, total / len(embeddings))
    return head.eval()


def head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """BCE on the unsafe logit for every row, on category logits for unsafe rows only.

    logits, targets: [B, 8]."""
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    unsafe_loss = bce(logits[:, 0], targets[:, 0])
    unsafe_rows = targets[:, 0] > 0.5
    if not bool(unsafe_rows.any()):
        return unsafe_loss
    category_loss = bce(logits[unsafe_rows, 1:], targets[unsafe_rows, 1:])
    return unsafe_loss + category_loss


@dataclass(frozen=True)
class GuardTrainingPlan:
    """Everything that determines a trained prompt guard (recorded in the head's metadata)."""

    block_size: int = 10
    calibration_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    everyday_train: int = 8000  # benign everyday captions added to training (see extra_data)
    everyday_calibration: int = 500  # ... and to calibration (disjoint from training's)
    toy_world: bool = True  # every toy-world prompt added to training
    head: HeadTraining = HeadTraining()


def benign_examples(texts: Sequence[str]) -> Examples:
    """Benign-only examples (all targets 0)."""
    return Examples(list(texts), torch.zeros(len(texts), len(LABELS)))


def concat_examples(*parts: Examples) -> Examples:
    return Examples([t for p in parts for t in p.texts], torch.cat([p.targets for p in parts]))


def extra_examples(plan: GuardTrainingPlan) -> dict[str, Examples]:
    """The non-CoProV2 examples of training and calibration (see :mod:`alignguard.guards.extra_data`)."""
    from alignguard.guards.extra_data import everyday_captions, toy_benign, toy_pairs

    captions = everyday_captions(plan.everyday_train + plan.everyday_calibration, seed=plan.split_seed)
    train = [benign_examples(captions[: plan.everyday_train])]
    if plan.toy_world:
        train += [pair_examples(toy_pairs()), benign_examples(toy_benign())]
    return {"train": concat_examples(*train), "calibration": benign_examples(captions[plan.everyday_train :])}


def head_scores(head: PromptGuardHead, embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(unsafe [N], categories [N, 7])``: the scores :class:`~alignguard.guards.prompt_guard.PromptGuard`
    reports (category = unsafe x P(category | unsafe))."""
    with torch.inference_mode():
        probs = torch.sigmoid(head(embeddings).float())
    return probs[:, 0], probs[:, :1] * probs[:, 1:]


def fit_prompt_guard(
    pairs: Sequence[PromptPair],
    embeddings: Callable[[Sequence[str]], torch.Tensor],
    plan: GuardTrainingPlan = GuardTrainingPlan(),
    on_epoch: Callable[[int, float], None] | None = None,
) -> tuple[HeadBundle, dict]:
    """Split, train on train, calibrate thresholds on calibration, evaluate on test.

    ``embeddings(texts)`` returns unit-norm ``[N, 384]`` rows (cached by the caller). Returns the
    head with its thresholds and a report (split sizes, leakage vs a naive split, metrics)."""
    split = block_split(
        pairs, plan.block_size, plan.calibration_fraction, plan.test_fraction, plan.split_seed
    )
    examples = {name: pair_examples(getattr(split, name)) for name in SPLITS}
    extra = extra_examples(plan)
    for name in ("train", "calibration"):  # the test split stays pure CoProV2 (the acceptance figure)
        examples[name] = concat_examples(examples[name], extra[name])
    features = {name: embeddings(examples[name].texts) for name in SPLITS}
    head = train_head(features["train"], examples["train"].targets, plan.head, on_epoch)
    calibration_scores = head_scores(head, features["calibration"])
    thresholds = calibrate(*calibration_scores, examples["calibration"].targets)
    report = {
        "split": {**split.sizes(), "leakage": _leakage_report(split, embeddings, plan.split_seed)},
        "thresholds": thresholds.to_json(),
        "calibration": evaluate(*calibration_scores, examples["calibration"].targets, thresholds),
        "test": evaluate(*head_scores(head, features["test"]), examples["test"].targets, thresholds),
        "everyday_eval": _everyday_report(head, embeddings, thresholds),
    }
    return HeadBundle(head, thresholds, info={"plan": _plan_json(plan)}), report


def _everyday_report(head: PromptGuardHead, embeddings: Callable, thresholds) -> dict:
    """False-positive rate on the hand-written everyday prompts (never trained on)."""
    from alignguard.guards.calibration import flag_matrix
    from alignguard.guards.extra_data import EVERYDAY_EVAL

    flags = flag_matrix(*head_scores(head, embeddings(list(EVERYDAY_EVAL))), thresholds)
    return {
        "prompts": len(EVERYDAY_EVAL),
        "false_positive_rate": round(float(flags.any(dim=1).float().mean()), 4),
    }


def _leakage_report(split: GuardSplit, embeddings: Callable, seed: int) -> dict:
    """Test-in-train leakage of our split next to a naive pair-level split's."""
    out = {}
    for name, candidate in (
        ("block_split", split),
        ("random_pair_split", random_pair_split(split.train + split.calibration + split.test, seed)),
    ):
        train, test = pair_examples(candidate.train).texts, pair_examples(candidate.test).texts
        out[name] = {
            k: round(v, 4) for k, v in leakage(train, test, embeddings(train), embeddings(test)).items()
        }
    return out


def _plan_json(plan: GuardTrainingPlan) -> dict:
    from dataclasses import asdict

    return asdict(plan)
