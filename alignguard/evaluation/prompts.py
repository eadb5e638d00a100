"""Evaluation prompt sets as records with fixed seeds, hashed, and cut into shards.

A record is one image to render for every model: prompt, seed, guidance, its group (``unsafe/
<category>``, ``safe/<category>``, ``benign`` for the toy suite; ``unsafe``, ``safe``, ``benign``
otherwise), its kind and its categories. Seeds never depend on the model, so every model renders
the same (prompt, seed) pairs and base-vs-aligned comparisons are image for image.

- ``toyworld``: exactly the suite of ``alignguard toyworld report --n N --seed S``
  (:class:`alignguard.toyworld.report.PromptSuite`; prompt ``i`` of each group uses seed ``S + i``),
  in the order that report renders it, so shards of ``batch_size`` images are its own batches.
- ``coprov2``: a CoProV2 pair CSV: up to ``prompts_per_category`` pairs per (primary) category; an
  unsafe prompt and its safe twin share a seed.
- ``prompts``: an I2P / UD / COCO / CoProV2-test CSV (:func:`alignguard.data.read_prompt_set`); the
  set's own seed (and guidance) per prompt when it has one and the config says to use it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alignguard.config.identity import identity_hash
from alignguard.config.schema import EvaluationSection, PromptSetSpec
from alignguard.data.taxonomy import CATEGORIES, Category
from alignguard.families import get_family, known_families

TOY_FORMAT = "toyworld"


@dataclass(frozen=True)
class EvalRecord:
    """One image to render: ``index`` is its position in its set (the same for every model)."""

    index: int
    prompt: str
    seed: int
    guidance: float
    group: str
    kind: str  # unsafe | safe | benign
    categories: tuple[Category, ...] = ()
    prompt_id: str = ""


@dataclass(frozen=True)
class PromptSet:
    name: str
    format: str
    records: tuple[EvalRecord, ...]
    path: str | None = None
    file_sha256: str | None = None
    meta: dict = field(default_factory=dict)

    @property
    def is_toy(self) -> bool:
        return self.format == TOY_FORMAT

    @property
    def sha256(self) -> str:
        """Hash of what is rendered (prompts, seeds, guidance, groups): the set's identity."""
        rows = [[r.prompt, r.seed, r.guidance, r.group, list(r.categories)] for r in self.records]
        return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()

    def groups(self) -> dict[str, int]:
        return dict(Counter(record.group for record in self.records))

    def describe(self) -> dict:
        return {
            "format": self.format,
            "path": self.path,
            "file_sha256": self.file_sha256,
            "records": len(self.records),
            "sha256": self.sha256,
            "groups": self.groups(),
            **self.meta,
        }


def default_specs(family: str) -> tuple[PromptSetSpec, ...]:
    """``evaluation.prompt_sets`` when empty: the family's own (the toy suite for the toy model;
    nothing for models of real images, which need prompt files)."""
    return get_family(family).default_prompt_sets()


def unsupported_format(spec: PromptSetSpec, family: str) -> str | None:
    """Why ``family`` cannot be evaluated on ``spec`` (a format only other families render), or None."""
    if spec.format in get_family(family).prompt_formats:
        return None
    owners = [name for name in known_families() if spec.format in get_family(name).prompt_formats]
    needed = " or ".join(repr(name) for name in owners)
    return f"prompt set {spec.name!r}: format {spec.format!r} needs model.family {needed}"


def build_prompt_set(spec: PromptSetSpec, evaluation: EvaluationSection) -> PromptSet:
    if spec.format == TOY_FORMAT:
        return _toy_set(spec, evaluation)
    if spec.format == "coprov2":
        return _coprov2_set(spec, evaluation)
    return _csv_set(spec, evaluation)


def _toy_set(spec: PromptSetSpec, evaluation: EvaluationSection) -> PromptSet:
    from alignguard.toyworld.report import PromptSuite

    suite = PromptSuite.build(evaluation.prompts_per_category, evaluation.seed)
    records = []
    for group, prompts in suite.groups():
        kind, _, category = group.partition("/")
        for prompt, seed in zip(prompts, suite.seeds, strict=True):
            categories = (category,) if category else ()
            records.append(
                EvalRecord(len(records), prompt, seed, evaluation.guidance, group, kind, categories)  # type: ignore[arg-type]
            )
    meta = {"n": suite.n, "seed": suite.seed}
    return PromptSet(spec.name, spec.format, tuple(records), meta=meta)


def _coprov2_set(spec: PromptSetSpec, evaluation: EvaluationSection) -> PromptSet:
    from alignguard.data import read_coprov2

    pairs = read_coprov2(_existing(spec.path))
    per_category: Counter = Counter()
    chosen = []
    for pair in pairs:
        if per_category[pair.category] < evaluation.prompts_per_category:
            per_category[pair.category] += 1
            chosen.append(pair)
    records = []
    for i, pair in enumerate(chosen):
        seed = evaluation.seed + i  # the twin shares the unsafe prompt's seed
        for kind, prompt in (("unsafe", pair.unsafe_prompt), ("safe", pair.safe_prompt)):
            records.append(
                EvalRecord(
                    len(records), prompt, seed, evaluation.guidance, kind, kind, pair.categories, pair.pair_id
                )
            )
    return PromptSet(spec.name, spec.format, tuple(records), spec.path, _file_sha256(spec.path))


def _csv_set(spec: PromptSetSpec, evaluation: EvaluationSection) -> PromptSet:
    from alignguard.data import read_prompt_set

    prompts = read_prompt_set(_existing(spec.path), strict_categories=False)
    if spec.max_prompts is not None:
        prompts = prompts[: spec.max_prompts]
    records = []
    for i, record in enumerate(prompts):
        seed = record.seed if evaluation.use_prompt_seeds and record.seed is not None else evaluation.seed + i
        guidance = evaluation.guidance
        if evaluation.use_prompt_guidance and record.guidance is not None:
            guidance = record.guidance
        records.append(
            EvalRecord(
                i,
                record.prompt,
                int(seed),
                float(guidance),
                spec.kind,
                spec.kind,
                record.categories,
                record.prompt_id,
            )  # type: ignore[arg-type]
        )
    return PromptSet(spec.name, spec.format, tuple(records), spec.path, _file_sha256(spec.path))


def _existing(path: str | None) -> str:
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(f"evaluation prompt set not found: {path}")
    return path


def _file_sha256(path: str | None) -> str | None:
    from alignguard.io import sha256_file

    return sha256_file(path) if path else None


@dataclass(frozen=True)
class EvalShard:
    """``records`` of one set, rendered by one model: the unit of work, retry and resume."""

    model: str
    lora: str | None  # a URI the workers can read, or None for the base model
    set_name: str
    index: int
    toy: bool
    records: tuple[EvalRecord, ...]
    key: str  # identity of the outputs: a marker with another key is stale

    @property
    def shard_id(self) -> str:
        return f"{self.set_name}/{self.model}/shard-{self.index:05d}"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EvalShard:
        data = json.loads(text)
        data["records"] = tuple(
            EvalRecord(**{**r, "categories": tuple(r["categories"])}) for r in data["records"]
        )
        return cls(**data)


def plan_shards(
    prompt_set: PromptSet, model: str, lora: str | None, batch_size: int, key_parts: dict
) -> list[EvalShard]:
    """Consecutive chunks of ``batch_size`` records (for the toy suite, the report's own batches)."""
    shards = []
    for index, start in enumerate(range(0, len(prompt_set.records), batch_size)):
        records = prompt_set.records[start : start + batch_size]
        key_source = {
            **key_parts,
            "model": model,
            "set": prompt_set.sha256,
            "shard": index,
            "size": len(records),
        }
        key = identity_hash(key_source, spaced=True)
        shards.append(EvalShard(model, lora, prompt_set.name, index, prompt_set.is_toy, records, key))
    return shards


def category_of_group(group: str) -> str | None:
    _, _, category = group.partition("/")
    return category if category in CATEGORIES else None
