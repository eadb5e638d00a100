"""The evaluation workers as plain classes (Ray wraps them as actor pools in ``cluster/``).

- :class:`EvalRenderer`: the pipeline loaded once; a shard = one model's images of a chunk of a
  prompt set. LoRAs are switched between shards with the same calls as ``alignguard toyworld
  report`` (``load_lora`` / ``unload_lora_weights``), so the numbers agree with it. The toy judge
  runs here, on the float images exactly as the report judges them (before 8-bit rounding).
- :class:`EvalScorer`: the real-image evaluators loaded once (NudeNet, Q16, CLIPScore, Inception);
  scores a rendered shard, then stores its images (+ features) and its marker, marker last.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import asdict

import numpy as np

from alignguard.config.schema import ModelSection
from alignguard.evaluation.evaluators import EvaluatorSettings
from alignguard.evaluation.prompts import EvalShard
from alignguard.io import RunDir, sha256_bytes
from alignguard.toyworld.judge import Judgement

SHARDS_DIR = "shards"


def judgement_to_json(j: Judgement) -> dict:
    return asdict(j)


def judgement_from_json(data: dict) -> Judgement:
    centroid = tuple(data["centroid"]) if data["centroid"] is not None else None
    bbox = tuple(data["bbox"]) if data["bbox"] is not None else None
    return Judgement(
        data["harm_scores"], data["shape"], data["colour"], centroid, bbox, data["area"], data["fill"]
    )


class EvalRenderer:
    """Renders shards with one pipeline, switching LoRAs between shards."""

    def __init__(self, model: ModelSection, steps: int) -> None:
        from alignguard.families import load_pipeline

        self.pipe = load_pipeline(model)
        self.steps = steps
        self.current: str | None = None  # the LoRA URI now loaded

    def use(self, lora: str | None) -> None:
        """Make ``lora`` (a URI, or None for the base model) the active adapter."""
        if lora == self.current:
            return
        if self.current is not None:
            self.pipe.unload_lora_weights()
            self.current = None
        if lora is not None:
            _load_lora_uri(self.pipe, lora)
            self.current = lora

    def render(self, shard: EvalShard) -> np.ndarray:
        """Images ``[N, H, W, 3]`` float32 in [0, 1], in record order."""
        from alignguard.generation import generate

        self.use(shard.lora)
        by_guidance: dict[float, list[int]] = defaultdict(list)
        for position, record in enumerate(shard.records):
            by_guidance[record.guidance].append(position)
        images: list[np.ndarray | None] = [None] * len(shard.records)
        for guidance, positions in by_guidance.items():
            records = [shard.records[p] for p in positions]
            # One generator batch per guidance: the whole shard in the common case (the toy
            # suite's shards are the report's own batches, so even float round-off agrees).
            out = generate(
                self.pipe,
                [r.prompt for r in records],
                [r.seed for r in records],
                self.steps,
                guidance,
                len(records),
            )
            for p, image in zip(positions, out, strict=True):
                images[p] = image
        return np.stack(images)  # type: ignore[arg-type]

    def render_and_judge(self, shard: EvalShard) -> tuple[np.ndarray, list[dict] | None]:
        """uint8 images ``[N, H, W, 3]`` and, for toy shards, the judge's reading of each image."""
        from alignguard.imaging import to_uint8

        images = self.render(shard)
        judged = None
        if shard.toy:
            from alignguard.toyworld.judge import judge

            judged = [judgement_to_json(judge(image)) for image in images]
        return to_uint8(images), judged


def _load_lora_uri(pipe, uri: str) -> None:
    from alignguard.toyworld.report import load_lora

    storage = RunDir(os.path.dirname(uri))
    if storage.is_local:
        load_lora(pipe, uri)
        return
    with tempfile.TemporaryDirectory() as tmp:  # object storage: a local copy for diffusers
        local = os.path.join(tmp, os.path.basename(uri))
        with open(local, "wb") as handle:
            handle.write(storage.read_bytes(os.path.basename(uri)))
        load_lora(pipe, local)


class EvalScorer:
    """Scores rendered shards with the configured real-image evaluators and stores them."""

    def __init__(self, stage_uri: str, settings: EvaluatorSettings) -> None:
        self.stage = RunDir(stage_uri)
        self.settings = settings
        self.nudenet = self.clip = self.q16 = self.inception = None
        if settings.nudenet_classes is not None:
            from alignguard.guards.output_guard import NudeNetGuard

            self.nudenet = NudeNetGuard(settings.nudenet_classes, settings.nudenet_threshold)
        if settings.clip_path is not None:
            from alignguard.evaluation.clip import ClipEncoder

            self.clip = ClipEncoder(settings.clip_path, settings.device)
        if settings.q16_path is not None:
            from alignguard.evaluation.clip import ClipEncoder, Q16Classifier

            same = self.clip is not None and settings.q16_clip_path == settings.clip_path
            encoder = self.clip if same else ClipEncoder(settings.q16_clip_path, settings.device)
            self.q16 = Q16Classifier(settings.q16_path, encoder, settings.q16_threshold)
        if settings.inception_path is not None:
            from alignguard.evaluation.inception import load_inception

            self.inception = load_inception(settings.inception_path, settings.fid_dims, settings.device)

    def score(self, shard: EvalShard, images: np.ndarray) -> tuple[list[dict], np.ndarray | None]:
        """Per-image rows and Inception features ``[N, dims]`` (None for toy shards or without FID)."""
        rows = [{"index": r.index, "group": r.group} for r in shard.records]
        if shard.toy:
            return rows, None
        if self.nudenet is not None:
            for row, verdict in zip(rows, self.nudenet.check(images), strict=True):
                row["nudenet"] = round(verdict.scores["sexual"], 6)
                row["nudenet_flag"] = bool(verdict.flagged)
        if self.q16 is not None:
            probabilities = self.q16.probabilities(images)
            for row, p, flag in zip(rows, probabilities, self.q16.flags(probabilities), strict=True):
                row["q16"], row["q16_flag"] = round(float(p), 6), bool(flag)
        if self.clip is not None:
            from alignguard.evaluation.clip import clip_scores

            scores = clip_scores(self.clip, images, [r.prompt for r in shard.records])
            for row, value in zip(rows, scores, strict=True):
                row["clip_score"] = round(float(value), 6)
        features = None
        if self.inception is not None:
            from alignguard.evaluation.fid import inception_features

            features = inception_features(self.inception, images)
        return rows, features

    def store(
        self, shard: EvalShard, images: np.ndarray, rows: list[dict], judged: list[dict] | None, features
    ) -> dict:
        """Images (+ features) first, then the marker: a shard with a marker is complete."""
        from safetensors.numpy import save

        tensors = {"images": np.ascontiguousarray(images)}
        if features is not None:
            tensors["inception"] = np.ascontiguousarray(features, dtype=np.float32)
        data = save(tensors)
        self.stage.write_bytes(f"{SHARDS_DIR}/{shard.shard_id}.safetensors", data)
        if judged is not None:
            for row, judgement in zip(rows, judged, strict=True):
                row["judgement"] = judgement
        marker = {"key": shard.key, "model": shard.model, "set": shard.set_name, "shard": shard.index}
        marker.update({"tensors_sha256": sha256_bytes(data), "rows": rows})
        self.stage.write_text(f"{SHARDS_DIR}/{shard.shard_id}.json", json.dumps(marker))
        return {"shard_id": shard.shard_id, "images": len(rows)}

    def __call__(self, shard: EvalShard, images: np.ndarray, judged: list[dict] | None) -> dict:
        rows, features = self.score(shard, images)
        return self.store(shard, images, rows, judged, features)


def marker_path(shard: EvalShard) -> str:
    return f"{SHARDS_DIR}/{shard.shard_id}.json"


def read_marker(stage: RunDir, shard: EvalShard) -> dict | None:
    """The shard's marker when it is complete for this shard's key, else None."""
    rel = marker_path(shard)
    if not stage.exists(rel):
        return None
    try:
        marker = stage.read_json(rel)
    except ValueError:
        return None  # a torn marker cannot happen with atomic writes, but never trust one
    if marker.get("key") != shard.key or not stage.exists(f"{SHARDS_DIR}/{shard.shard_id}.safetensors"):
        return None
    return marker


def read_shard_tensors(stage: RunDir, shard: EvalShard) -> dict[str, np.ndarray]:
    from safetensors.numpy import load

    return load(stage.read_bytes(f"{SHARDS_DIR}/{shard.shard_id}.safetensors"))
