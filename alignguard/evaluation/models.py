"""Which models of a run are evaluated, and which are skipped (with the reason).

Candidates: ``base`` (always evaluated: every comparison is against it); the experts
``experts/<category>/`` of ``data.categories`` (configured when ``training.experts`` is
``per_category`` or ``both``), ``experts/all_single/`` (configured for ``all_single``/``both``),
``merged/`` and ``merge_baselines/<name>/`` of ``merge.baselines``. Whatever exists *and* whose
stage manifest verifies is evaluated, configured or not; what is configured but missing or
unfinished is reported as skipped, never silently dropped. ``evaluation.models`` narrows the list.
"""

from __future__ import annotations

from dataclasses import dataclass

from alignguard.config.schema import ExperimentConfig
from alignguard.io import RunDir, sha256_bytes, stage_status

LORA_NAME = "pytorch_lora_weights.safetensors"
BASE = "base"
ALL_SINGLE = "all_single"
MERGED = "merged"
MODEL_KINDS = ("base", "expert", "all_single", "merged", "baseline")


@dataclass(frozen=True)
class EvalModel:
    name: str
    kind: str  # one of MODEL_KINDS
    lora: str | None = None  # path relative to the run directory
    sha256: str | None = None

    def to_json(self) -> dict:
        return {"kind": self.kind, "lora": self.lora, "sha256": self.sha256}


@dataclass(frozen=True)
class SkippedModel:
    name: str
    kind: str
    reason: str

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind, "reason": self.reason}


def _candidates(run: RunDir, config: ExperimentConfig) -> list[tuple[str, str, str, str, bool]]:
    """(name, kind, lora path, stage dir, configured) for every model that could be evaluated."""
    experts_mode = config.training.experts
    configured_experts = set(config.data.categories) if experts_mode != "all_single" else set()
    present = [n for n in run.listdir("experts") if run.exists("experts", n, LORA_NAME)]
    rows = []
    for name in [*config.data.categories, *sorted(set(present) - set(config.data.categories))]:
        if name == ALL_SINGLE:
            continue
        rows.append(
            (name, "expert", f"experts/{name}/{LORA_NAME}", f"experts/{name}", name in configured_experts)
        )
    all_single_wanted = experts_mode in ("all_single", "both")
    rows.append(
        (
            ALL_SINGLE,
            "all_single",
            f"experts/{ALL_SINGLE}/{LORA_NAME}",
            f"experts/{ALL_SINGLE}",
            all_single_wanted,
        )
    )
    rows.append((MERGED, "merged", f"{MERGED}/{LORA_NAME}", MERGED, True))
    baselines = list(config.merge.baselines)
    baselines += sorted(
        n
        for n in run.listdir("merge_baselines")
        if run.exists("merge_baselines", n, LORA_NAME) and n not in baselines
    )
    for name in baselines:
        configured = name in config.merge.baselines
        rows.append((name, "baseline", f"merge_baselines/{name}/{LORA_NAME}", "merge_baselines", configured))
    return rows


def discover_models(run: RunDir, config: ExperimentConfig) -> tuple[list[EvalModel], list[SkippedModel]]:
    """The models to evaluate (``base`` first) and the skipped ones with reasons."""
    wanted = set(config.evaluation.models) if config.evaluation.models is not None else None
    models, skipped = [EvalModel(BASE, "base")], []
    seen = {BASE}
    for name, kind, lora, stage_dir, configured in _candidates(run, config):
        if name in seen:
            continue
        seen.add(name)
        if wanted is not None and name not in wanted:
            if configured or run.exists(lora):
                skipped.append(SkippedModel(name, kind, "not in evaluation.models"))
            continue
        if not run.exists(lora):
            if configured or (wanted is not None and name in wanted):
                skipped.append(SkippedModel(name, kind, f"{run.url(lora)} does not exist"))
            continue
        status = stage_status(run.sub(stage_dir), verify_hashes=False)
        if not status.complete:
            why = "; ".join(status.reasons) or "no manifest.json (the stage did not finish)"
            skipped.append(SkippedModel(name, kind, f"{run.url(stage_dir)} is not complete: {why}"))
            continue
        models.append(EvalModel(name, kind, lora, sha256_bytes(run.read_bytes(lora))))
    if wanted is not None:
        unknown = sorted(wanted - seen)
        skipped += [SkippedModel(name, "unknown", "no such model in this run or config") for name in unknown]
    return models, skipped
