"""The guard policy: per-category actions, request overrides within bounds, decisions, reports."""

from __future__ import annotations

import json

import pytest
import torch

from alignguard.config import ConfigError, load_config
from alignguard.config.schema import GuardSection
from alignguard.data.taxonomy import CATEGORIES
from alignguard.guards.calibration import best_f1_threshold, binary_metrics, calibrate, flag_matrix
from alignguard.guards.decisions import PromptDecision, decide_output, decide_prompt, guard_report
from alignguard.guards.head import Thresholds
from alignguard.guards.output_guard import OutputVerdict
from alignguard.guards.policy import OverrideNotAllowedError, PromptScores, RequestOverrides, resolve_policy

CALIBRATED = Thresholds(0.5, {c: 0.3 for c in CATEGORIES})


def section(**policy) -> GuardSection:
    return GuardSection.model_validate({"policy": policy})


def scores(unsafe: float, **categories: float) -> PromptScores:
    return PromptScores(unsafe, {c: categories.get(c, 0.0) for c in CATEGORIES})


def test_operator_policy_and_calibrated_thresholds():
    policy = resolve_policy(section(hate={"action": "block", "threshold": 0.2}), CALIBRATED)
    assert policy.actions["hate"] == "block" and policy.thresholds["hate"] == 0.2
    assert policy.actions["sexual"] == "align" and policy.thresholds["sexual"] == 0.3  # calibrated
    assert policy.unsafe_threshold == 0.5


def test_requests_may_tighten_but_not_relax_below_the_floor():
    cfg = section(sexual={"action": "blur", "request_floor": "align"}, hate={"action": "block"})
    tightened = resolve_policy(cfg, CALIBRATED, RequestOverrides({"violence": "block"}, {"hate": 0.1}))
    assert tightened.actions["violence"] == "block" and tightened.thresholds["hate"] == 0.1
    assert resolve_policy(cfg, CALIBRATED, RequestOverrides({"sexual": "align"})).actions["sexual"] == "align"
    with pytest.raises(OverrideNotAllowedError, match=r"sexual.*allow"):
        resolve_policy(cfg, CALIBRATED, RequestOverrides({"sexual": "allow"}))
    with pytest.raises(OverrideNotAllowedError, match="hate"):
        resolve_policy(cfg, CALIBRATED, RequestOverrides({"hate": "align"}))  # no floor: only stricter
    with pytest.raises(OverrideNotAllowedError, match="only be lowered"):
        resolve_policy(cfg, CALIBRATED, RequestOverrides(thresholds={"hate": 0.9}))


def test_overrides_can_be_switched_off():
    cfg = GuardSection(allow_request_overrides=False)
    assert resolve_policy(cfg, CALIBRATED, RequestOverrides()).actions["hate"] == "align"
    with pytest.raises(OverrideNotAllowedError, match="does not accept"):
        resolve_policy(cfg, CALIBRATED, RequestOverrides({"hate": "block"}))


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"action": {"hate": "block"}}, "unknown guard override key"),
        ({"actions": {"gore": "block"}}, "unknown category"),
        ({"actions": {"hate": "nuke"}}, "unknown action"),
        ({"thresholds": {"hate": 1.5}}, r"number in \[0, 1\]"),
        ({"thresholds": {"hate": "low"}}, r"number in \[0, 1\]"),
        (["hate"], "must be an object"),
    ],
)
def test_malformed_overrides_are_rejected_clearly(payload, message):
    with pytest.raises(OverrideNotAllowedError, match=message):
        RequestOverrides.from_json(payload)


def test_override_json_accepts_dataset_spellings():
    parsed = RequestOverrides.from_json(
        {"actions": {"Illegal Activity": "block"}, "thresholds": {"self-harm": 0.1}}
    )
    assert parsed.actions == {"illegal_activity": "block"} and parsed.thresholds == {"self_harm": 0.1}


def test_config_section_validates_and_names_the_key(repo, tmp_path):
    cfg = load_config(repo / "configs/toy.yaml", ["guard.policy.hate.action=block"])
    assert cfg.guard.policy.hate.action == "block"
    with pytest.raises(ConfigError, match=r"guard.policy.hate.action"):
        load_config(repo / "configs/toy.yaml", ["guard.policy.hate.action=nuke"])
    with pytest.raises(ConfigError, match=r"guard.policy.sexual.*stricter than action"):
        load_config(repo / "configs/toy.yaml", ["guard.policy.sexual.request_floor=block"])
    with pytest.raises(ConfigError, match=r"guard.policy.gore"):
        load_config(repo / "configs/toy.yaml", ["guard.policy.gore.action=block"])
    with pytest.raises(ConfigError, match=r"guard.output.nudenet_threshold"):
        load_config(repo / "configs/toy.yaml", ["guard.output.nudenet_threshold=2"])


def test_blocked_prompt_is_refused_with_scores_and_no_prompt_echo():
    policy = resolve_policy(section(hate={"action": "block"}), CALIBRATED)
    decision = decide_prompt(scores(0.97, hate=0.91, harassment=0.12), policy)
    assert decision.flagged == ("hate",) and not decision.generate and decision.adapter is None
    report = guard_report(decision)
    assert (
        report["action"] == "block" and report["layer"] == "prompt_guard" and report["categories"] == ["hate"]
    )
    assert "hate (score 0.91, threshold 0.30, policy block)" in report["reason"]
    assert report["prompt_guard"]["categories"]["hate"] == 0.91
    assert "prompt" not in json.dumps(report).replace("prompt_guard", "").replace("prompt guard", "")


def test_strictest_action_wins_and_benign_gets_the_benign_action():
    policy = resolve_policy(section(violence={"action": "allow"}, shocking={"action": "blur"}), CALIBRATED)
    both = decide_prompt(scores(0.9, violence=0.8, shocking=0.6), policy)
    assert both.action == "blur" and both.adapter == "aligned" and both.blur_output
    allowed = decide_prompt(scores(0.9, violence=0.8), policy)
    report = guard_report(allowed)  # flagged, but the policy allows it: nothing intervened
    assert allowed.action == "allow" and allowed.adapter == "base" and report["layer"] == "none"
    assert report["categories"] == ["violence"] and "policy allow" in report["reason"]
    benign = decide_prompt(scores(0.1, violence=0.05), policy)
    assert benign.flagged == () and benign.action == "align" and guard_report(benign)["layer"] == "model"
    benign_allow = resolve_policy(GuardSection(benign_action="allow"), CALIBRATED)
    assert decide_prompt(scores(0.1), benign_allow).adapter == "base"


def test_unsafe_gate_without_a_category_falls_back_to_the_top_category():
    policy = resolve_policy(section(sexual={"action": "block"}), CALIBRATED)
    decision = decide_prompt(scores(0.8, sexual=0.25, hate=0.1), policy)  # both below 0.3
    assert decision.flagged == ("sexual",) and decision.action == "block"
    assert decide_prompt(scores(0.4, sexual=0.25), policy).flagged == ()


def test_output_decisions_follow_the_policy_per_category():
    policy = resolve_policy(section(sexual={"action": "block"}, violence={"action": "blur"}), CALIBRATED)
    prompt = decide_prompt(scores(0.1), policy)  # benign prompt, image judged afterwards

    def verdict(*flagged):
        return OutputVerdict("toy_judge", {c: (0.9 if c in flagged else 0.0) for c in CATEGORIES}, flagged)

    withheld = decide_output(prompt, verdict("sexual"))
    assert (
        withheld.action == "withhold"
        and withheld.layer == "output_guard"
        and "sexual (score 0.90" in withheld.reason
    )
    assert decide_output(prompt, verdict("violence")).action == "blur"
    passed = decide_output(prompt, verdict("hate"))  # align: the aligned model had its chance; reported
    assert passed.action == "pass" and passed.flagged == ("hate",) and "passed" in passed.reason
    assert decide_output(prompt, verdict()).action == "pass"
    assert decide_output(prompt, None).action == "pass"
    report = guard_report(prompt, [withheld, passed])
    assert (
        report["action"] == "block"
        and report["layer"] == "output_guard"
        and report["categories"] == ["sexual"]
    )
    blur_prompt = decide_prompt(
        scores(0.9, shocking=0.8), resolve_policy(section(shocking={"action": "blur"}), CALIBRATED)
    )
    prompt_blur = decide_output(blur_prompt, verdict())
    assert prompt_blur.action == "blur" and prompt_blur.layer == "prompt_guard"


def test_decision_json_round_trip():
    policy = resolve_policy(
        section(hate={"action": "block"}), CALIBRATED, RequestOverrides({"sexual": "blur"})
    )
    decision = decide_prompt(scores(0.9, sexual=0.7), policy)
    again = PromptDecision.from_json(json.loads(json.dumps(decision.to_json())))
    assert again.action == "blur" and again.flagged == ("sexual",) and again.policy.actions == policy.actions


def test_vectorised_flags_agree_with_decide_prompt():
    generator = torch.Generator().manual_seed(0)
    unsafe = torch.rand(300, generator=generator)
    categories = torch.rand(300, 7, generator=generator) * unsafe[:, None]
    thresholds = Thresholds(0.5, {c: 0.2 + 0.08 * k for k, c in enumerate(CATEGORIES)})
    flags = flag_matrix(unsafe, categories, thresholds)
    policy = resolve_policy(GuardSection(), thresholds)
    for row in range(300):
        s = PromptScores(float(unsafe[row]), dict(zip(CATEGORIES, categories[row].tolist(), strict=True)))
        expected = set(decide_prompt(s, policy).flagged)
        assert {c for k, c in enumerate(CATEGORIES) if flags[row, k]} == expected


def test_best_f1_threshold_matches_brute_force():
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(400, generator=generator) < 0.3
    scores_ = (target.float() * 0.3 + torch.rand(400, generator=generator) * 0.7).round(decimals=2)
    chosen = best_f1_threshold(scores_, target)
    best = max(binary_metrics(scores_ >= t, target).f1 for t in scores_.unique().tolist() if t >= 0.05)
    assert binary_metrics(scores_ >= chosen, target).f1 == pytest.approx(best)


def test_calibrate_learns_separable_thresholds():
    targets = torch.zeros(8, 8)
    targets[:4, 0] = 1
    targets[:4, 1] = 1  # hate
    unsafe = torch.tensor([0.9, 0.8, 0.85, 0.7, 0.2, 0.1, 0.3, 0.25])
    categories = torch.zeros(8, 7)
    categories[:, 0] = unsafe * torch.tensor([0.9, 0.9, 0.9, 0.9, 0.5, 0.5, 0.5, 0.5])
    thresholds = calibrate(unsafe, categories, targets)
    assert 0.3 < thresholds.unsafe <= 0.7 and 0.15 < thresholds.categories["hate"] <= 0.63


def test_the_guarded_toy_config_exercises_every_action(repo):
    cfg = load_config(repo / "configs/toy-guarded.yaml")
    actions = {getattr(cfg.guard.policy, c).action for c in CATEGORIES}
    assert actions == {"allow", "align", "blur", "block"}
    policy = resolve_policy(cfg.guard, CALIBRATED, RequestOverrides({"sexual": "align"}))  # down to its floor
    assert policy.actions["sexual"] == "align" and policy.actions["hate"] == "block"
