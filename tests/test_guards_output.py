"""Output guards offline: NudeNet's shipped 320n detector on real output, the toy judge, blurring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from alignguard.config.schema import GuardSection
from alignguard.data.taxonomy import CATEGORIES
from alignguard.guards.blur import obscure
from alignguard.guards.output_guard import NUDENET_CLASS_SETS, NudeNetGuard, OutputGuard, ToyJudgeGuard
from alignguard.guards.policy import resolve_policy
from alignguard.guards.runtime import OutputGuardService, build_output_guard
from alignguard.toyworld.judge import judge
from alignguard.toyworld.world import BENIGN_COLOURS, HARM_COLOURS, SHAPES, Layout, render, sample_layout


@pytest.fixture(scope="module")
def portrait() -> np.ndarray:
    """A real photograph (Grace Hopper, shipped with matplotlib, a dev dependency): NudeNet finds a face."""
    matplotlib = pytest.importorskip("matplotlib")
    from PIL import Image

    path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def nudenet_guard() -> NudeNetGuard:
    pytest.importorskip("nudenet")
    return NudeNetGuard("genitalia", 0.6)


def test_nudenet_runs_offline_on_real_output(nudenet_guard, portrait):
    detections = nudenet_guard.detect(portrait)[0]
    faces = [d for d in detections if d["class"] == "FACE_FEMALE"]
    assert faces and 0.5 < faces[0]["score"] <= 1.0
    x, y, w, h = faces[0]["box"]
    assert 0 <= x < portrait.shape[1] and 0 <= y < portrait.shape[0] and w > 50 and h > 50
    # The paper's class set ignores faces: nothing flagged, no evidence, score 0.
    verdict = nudenet_guard.check(portrait)[0]
    assert verdict.flagged == () and verdict.scores == {"sexual": 0.0} and verdict.evidence == []
    # Float input in [0, 1] reads the same image.
    float_verdict = nudenet_guard.detect(portrait.astype(np.float32) / 255.0)[0]
    assert [d["class"] for d in float_verdict] == [d["class"] for d in detections]


def test_nudenet_class_filtering_and_threshold_on_real_detections(nudenet_guard, portrait):
    detections = nudenet_guard.detect(portrait)[0]
    face_score = max(d["score"] for d in detections if d["class"] == "FACE_FEMALE")
    below = NudeNetGuard.__new__(NudeNetGuard)  # same detector, other class set / threshold
    below.detector, below.classes, below.threshold = (
        nudenet_guard.detector,
        ("FACE_FEMALE",),
        face_score - 0.01,
    )
    flagged = below.verdict(detections)
    assert flagged.flagged == ("sexual",) and flagged.scores["sexual"] == pytest.approx(face_score)
    assert [e["class"] for e in flagged.evidence] == ["FACE_FEMALE"]
    above = NudeNetGuard(("FACE_FEMALE",), face_score + 0.01, detector=nudenet_guard.detector).verdict(
        detections
    )
    assert above.flagged == () and above.scores["sexual"] == pytest.approx(
        face_score
    )  # reported, not flagged


def test_nudenet_class_sets_and_arguments():
    assert set(NUDENET_CLASS_SETS["genitalia"]) == {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED"}
    assert set(NUDENET_CLASS_SETS["genitalia"]) < set(NUDENET_CLASS_SETS["exposed"])
    assert all(c.endswith("_EXPOSED") for c in NUDENET_CLASS_SETS["exposed"])
    pytest.importorskip("nudenet")
    with pytest.raises(ValueError, match="threshold"):
        NudeNetGuard("genitalia", 1.5)
    with pytest.raises(KeyError):
        NudeNetGuard("everything")


def test_nudenet_on_a_synthetic_image_finds_nothing(nudenet_guard):
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    verdicts = nudenet_guard.check(np.stack([image, image]))
    assert len(verdicts) == 2 and all(v.flagged == () and v.scores["sexual"] == 0.0 for v in verdicts)
    with pytest.raises(ValueError, match="RGB"):
        nudenet_guard.check(np.zeros((4, 4)))


def test_toy_judge_guard_reads_every_harm_colour():
    guard = ToyJudgeGuard(0.5)
    assert isinstance(guard, OutputGuard) and guard.categories == CATEGORIES
    layout = Layout(16.0, 16.0, 12)
    images = [render("square", HARM_COLOURS[c], layout) for c in CATEGORIES]
    for category, verdict in zip(CATEGORIES, guard.check(np.stack(images)), strict=True):
        assert verdict.flagged == (category,) and verdict.scores[category] > 0.9
    benign = guard.check(render("bar", BENIGN_COLOURS["white"], layout))[0]
    assert benign.flagged == () and max(benign.scores.values()) == 0.0


def test_obscure_makes_toy_harm_unreadable():
    rng = np.random.default_rng(0)
    for category in CATEGORIES:
        for shape in SHAPES:
            for _ in range(4):
                image = render(shape, HARM_COLOURS[category], sample_layout(rng))
                blurred = obscure(image)
                assert judge(image).harmful and not judge(blurred).harmful, (category, shape)
                assert blurred.shape == image.shape and blurred.dtype == image.dtype
    as_uint8 = (render("square", HARM_COLOURS["hate"], Layout(16, 16, 15)) * 255).astype(np.uint8)
    out = obscure(as_uint8)
    assert out.dtype == np.uint8 and np.abs(out.astype(int) - as_uint8).mean() > 10
    with pytest.raises(ValueError, match="fraction"):
        obscure(as_uint8, 0.0)


def test_output_service_withholds_blurs_or_passes_by_policy():
    cfg = GuardSection.model_validate(
        {
            "policy": {"violence": {"action": "block"}, "sexual": {"action": "blur"}},
            "output": {"kind": "toy_judge"},
        }
    )
    service = OutputGuardService(cfg)
    layout = Layout(16.0, 16.0, 14)
    images = np.stack(
        [render("square", HARM_COLOURS[c], layout) for c in ("violence", "sexual", "hate")]
        + [render("square", BENIGN_COLOURS["orange"], layout)]
    )
    guarded = service.apply_actions(images, service.operator_actions())
    actions = [d.action for d in guarded.decisions]
    assert actions == ["withhold", "blur", "pass", "pass"]
    assert guarded.images[0] is None
    assert not judge(guarded.images[1]).harmful  # blurred for real
    assert judge(guarded.images[2]).category == "hate"  # align: passed, but reported
    assert guarded.decisions[2].flagged == ("hate",)
    np.testing.assert_array_equal(guarded.images[3], (images[3] * 255 + 0.5).astype(np.uint8))


def test_output_guard_kind_follows_the_model_family():
    assert isinstance(build_output_guard(GuardSection(), "toy"), ToyJudgeGuard)
    assert build_output_guard(GuardSection.model_validate({"output": {"kind": "none"}}), "sd15") is None
    pytest.importorskip("nudenet")
    guard = build_output_guard(
        GuardSection.model_validate({"output": {"nudenet_classes": "exposed"}}), "sd15"
    )
    assert isinstance(guard, NudeNetGuard) and guard.classes == NUDENET_CLASS_SETS["exposed"]


def test_prompt_level_blur_obscures_even_a_clean_image():
    from alignguard.guards.decisions import decide_prompt
    from alignguard.guards.head import Thresholds
    from alignguard.guards.policy import PromptScores

    cfg = GuardSection.model_validate({"policy": {"shocking": {"action": "blur"}}})
    policy = resolve_policy(cfg, Thresholds(0.5, {c: 0.3 for c in CATEGORIES}))
    decision = decide_prompt(
        PromptScores(0.9, {c: (0.8 if c == "shocking" else 0.0) for c in CATEGORIES}), policy
    )
    image = render("triangle", BENIGN_COLOURS["white"], Layout(16.0, 16.0, 14))
    guarded = OutputGuardService(cfg).apply(decision, image)
    assert guarded.decisions[0].action == "blur" and guarded.decisions[0].layer == "prompt_guard"
    assert judge(guarded.images[0]).shape != "triangle"
