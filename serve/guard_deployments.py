"""The guards as their own CPU Ray Serve deployments, composed into the serving app by handles.

Two deployments, each a thin shell over :mod:`alignguard.guards.runtime`:

- :class:`PromptGuardDeployment` (MiniLM + head, ~90 MB, 1 thread): ``check_prompt`` scores a
  prompt (batched across requests with ``@serve.batch``) and applies the policy;
- :class:`OutputGuardDeployment` (NudeNet 320n, or the toy judge in the toy world): ``check_images``
  gives one verdict per image; ``apply`` also returns the images as they may be shown (blurred,
  or ``None`` where withheld) and the response's ``guard`` report.

Both speak the guard contract of the serving app (``serve/guards.py`` of the serving issue:
``check_prompt(prompt, negative_prompt)`` and ``check_images(images, prompt)`` returning dicts
with ``allowed``, ``category``, ``scores``, ``reason``, ``guard``) and add what the policy needs:
``action`` (allow / align / blur / block), ``adapter`` ("aligned" = the merged adapter, "base" =
none, null = refused), ``layer``, ``flagged`` and ``decision`` (JSON to hand to the output guard;
it never holds the prompt). That contract alone can neither route by adapter nor return a blurred
image: ``check_images`` therefore fails closed on ``blur`` (``allowed`` false), and an ingress that
honours the whole policy uses ``verdict["adapter"]`` and :meth:`OutputGuardDeployment.apply`.

Intended composition (the serving app's ingress; ``cfg`` an ``ExperimentConfig``)::

    from serve.guard_deployments import bind_guards

    prompt_guard, output_guard = bind_guards(cfg)          # (None, None) when cfg.guard.enabled is false
    app = build_application(cfg, prompt_guard=prompt_guard, image_guard=output_guard)

    # in the ingress, per request:
    verdict = await prompt_guard.check_prompt.remote(prompt, negative_prompt, overrides)
    if not verdict["allowed"]:                              # blocked: 400 with verdict["reason"]
        return refuse(verdict)                              # (scores + reason; no prompt echo)
    adapter = verdict["adapter"]                            # "aligned" -> merged LoRA, "base" -> none
    images = await generator.generate.remote(..., adapter=adapter)
    shown = await output_guard.apply.remote(images, verdict["decision"])
    # shown["images"][i] is the image to encode (blurred when the policy says so) or None (withheld);
    # shown["report"] is the response's "guard" object: action, layer, categories, reason, scores.

Per-request ``overrides`` (``{"actions": {...}, "thresholds": {...}}``) may only tighten the
policy beyond the operator's ``guard.policy.<category>.request_floor``; a request asking for more
gets ``{"allowed": false, "error": "override_not_allowed", "reason": ...}`` (answer it 403).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ray import serve

from alignguard.config.schema import ExperimentConfig, GuardSection

PROMPT_BATCH = 16


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=64)
class PromptGuardDeployment:
    """Prompt guard + policy on CPU. ``guard``: the ``guard`` config section as a dict."""

    def __init__(self, guard: dict) -> None:
        import torch

        from alignguard.guards.runtime import PromptGuardService

        torch.set_num_threads(1)  # small model, many replicas: one thread each is fastest per core
        self.section = GuardSection.model_validate(guard)
        self.service = PromptGuardService(self.section)

    async def check_prompt(
        self, prompt: str, negative_prompt: str | None = None, overrides: dict | None = None
    ) -> dict:
        """The guard contract's prompt check. The negative prompt is not scored: it only steers
        away from content."""
        from alignguard.guards.decisions import decide_prompt
        from alignguard.guards.policy import OverrideNotAllowedError, RequestOverrides, resolve_policy

        try:
            policy = resolve_policy(
                self.section, self.service.prompt_guard.thresholds, RequestOverrides.from_json(overrides)
            )
        except OverrideNotAllowedError as exc:
            return {"allowed": False, "error": "override_not_allowed", "reason": str(exc), "guard": "policy"}
        scores = await self._score(prompt)
        return prompt_verdict(decide_prompt(scores, policy))

    @serve.batch(max_batch_size=PROMPT_BATCH, batch_wait_timeout_s=0.005)
    async def _score(self, prompts: list[str]) -> list:
        return self.service.prompt_guard.score(prompts)

    def thresholds(self) -> dict:
        """The calibrated thresholds in force (for /health and logs)."""
        return self.service.prompt_guard.thresholds.to_json()


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=32)
class OutputGuardDeployment:
    """Output guard + policy on CPU. ``guard``: the ``guard`` section as a dict; ``model_family``
    picks the guard when ``guard.output.kind`` is ``auto`` (toy -> toy judge, else NudeNet)."""

    def __init__(self, guard: dict, model_family: str = "toy") -> None:
        from alignguard.guards.runtime import OutputGuardService

        self.section = GuardSection.model_validate(guard)
        self.service = OutputGuardService(self.section, model_family)

    def check_images(
        self, images: np.ndarray, prompt: str | None = None, decision: dict | None = None
    ) -> list[dict]:
        """The guard contract's image check: one verdict per image; ``allowed`` means "may be shown
        as generated". This contract cannot return a blurred image, so a ``blur`` verdict is not
        allowed here (fail closed: withheld rather than shown unblurred); :meth:`apply` returns the
        blurred image instead."""
        outputs = self.apply(images, decision)["outputs"]
        return [{**o, "allowed": o["action"] == "pass"} for o in outputs]

    def apply(self, images: np.ndarray, decision: dict | None = None) -> dict[str, Any]:
        """Check and process ``images`` [N, H, W, 3] under ``decision`` (from ``check_prompt``; None:
        the operator's policy, no prompt guard). Returns ``images`` (uint8 arrays, None where
        withheld), ``outputs`` (one contract verdict per image) and ``report`` (the response's
        ``guard`` object; None without a prompt decision)."""
        from alignguard.guards.decisions import PromptDecision, guard_report

        if decision is None:
            actions = self.service.operator_actions()
            guarded = self.service.apply_actions(images, actions)
            report = None
        else:
            prompt_decision = PromptDecision.from_json(decision)
            actions = prompt_decision.policy.actions
            guarded = self.service.apply(prompt_decision, images)
            report = guard_report(prompt_decision, guarded.decisions)
        outputs = [output_verdict(o, actions) for o in guarded.decisions]
        return {"images": guarded.images, "outputs": outputs, "report": report}


def prompt_verdict(decision) -> dict:
    """A :class:`~alignguard.guards.decisions.PromptDecision` in the guard contract's shape."""
    from alignguard.guards.decisions import guard_report

    blocked = not decision.generate
    return {
        "allowed": not blocked,
        "category": _deciding_category(decision.flagged, decision.policy.actions, "block")
        if blocked
        else None,
        "scores": {c: round(s, 4) for c, s in decision.scores.categories.items()},
        "unsafe": round(decision.scores.unsafe, 4),
        "reason": guard_report(decision)["reason"],
        "guard": "prompt_guard",
        "action": decision.action,
        "adapter": decision.adapter,
        "layer": decision.layer,
        "flagged": list(decision.flagged),
        "decision": decision.to_json(),
    }


def output_verdict(outcome, actions: dict) -> dict:
    """An :class:`~alignguard.guards.decisions.OutputDecision` in the guard contract's shape
    (``actions``: the policy's action per category)."""
    verdict = outcome.verdict
    return {
        "allowed": outcome.action != "withhold",
        "category": _deciding_category(outcome.flagged, actions, "block")
        if outcome.action == "withhold"
        else None,
        "scores": {c: round(s, 4) for c, s in verdict.scores.items()} if verdict is not None else {},
        "reason": outcome.reason,
        "guard": verdict.guard if verdict is not None else "none",
        "action": outcome.action,
        "layer": outcome.layer,
        "flagged": list(outcome.flagged),
    }


def _deciding_category(flagged, actions: dict, action: str) -> str | None:
    """The first flagged category whose policy action is ``action`` (the one that decided)."""
    return next((c for c in flagged if actions[c] == action), flagged[0] if flagged else None)


def bind_guards(config: ExperimentConfig) -> tuple[Any, Any]:
    """The two guard deployments bound for ``config`` (``(None, None)`` when guards are disabled)."""
    if not config.guard.enabled:
        return None, None
    guard = config.guard.model_dump(mode="json")
    return PromptGuardDeployment.bind(guard), OutputGuardDeployment.bind(guard, config.model.family)
