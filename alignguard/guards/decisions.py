"""Turning guard scores into decisions, and decisions into the report each response carries.

:func:`decide_prompt` runs before generation, :func:`decide_output` on each generated image,
:func:`guard_report` summarises both. Reports name the layer that acted, the flagged categories
and their scores, and never contain the prompt or a withheld image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from alignguard.config.schema import GuardAction
from alignguard.data.taxonomy import Category
from alignguard.guards.output_guard import OutputVerdict
from alignguard.guards.policy import EffectivePolicy, Layer, PromptScores, strictest

OutputAction = Literal["pass", "blur", "withhold"]


@dataclass(frozen=True)
class PromptDecision:
    """The prompt guard's decision: ``action`` is the policy's action for the flagged categories
    (strictest wins) or the benign action when none is flagged."""

    action: GuardAction
    flagged: tuple[Category, ...]
    scores: PromptScores
    policy: EffectivePolicy

    def to_json(self) -> dict:
        """Everything downstream layers need (no prompt text): travels between deployments."""
        return {
            "action": self.action,
            "flagged": list(self.flagged),
            "scores": self.scores.to_json(),
            "policy": self.policy.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> PromptDecision:
        return cls(
            action=data["action"],
            flagged=tuple(data["flagged"]),
            scores=PromptScores.from_json(data["scores"]),
            policy=EffectivePolicy.from_json(data["policy"]),
        )

    @property
    def generate(self) -> bool:
        return self.action != "block"

    @property
    def adapter(self) -> Literal["aligned", "base"] | None:
        """Which model generates: the aligned adapter, the base model, or none (blocked)."""
        if self.action == "block":
            return None
        return "base" if self.action == "allow" else "aligned"

    @property
    def blur_output(self) -> bool:
        return self.action == "blur"

    @property
    def layer(self) -> Layer:
        return "prompt_guard" if self.flagged else "none"

    def reason(self) -> str:
        if not self.flagged:
            return f"no category flagged by the prompt guard (unsafe score {self.scores.unsafe:.2f})"
        described = _describe(
            self.flagged, self.scores.categories, self.policy.actions, self.policy.thresholds
        )
        return f"prompt guard flagged {described}"


def decide_prompt(scores: PromptScores, policy: EffectivePolicy) -> PromptDecision:
    """Flag each category whose score reaches its threshold; a prompt past the unsafe threshold
    with no category past its own is attributed to its highest-scoring category."""
    flagged = [c for c, s in scores.categories.items() if s >= policy.thresholds[c]]
    if not flagged and scores.unsafe >= policy.unsafe_threshold:
        flagged = [max(scores.categories, key=scores.categories.__getitem__)]
    action = strictest([policy.actions[c] for c in flagged], default=policy.benign_action)
    return PromptDecision(action, tuple(flagged), scores, policy)


@dataclass(frozen=True)
class OutputDecision:
    """What happens to one generated image."""

    action: OutputAction
    layer: Layer
    flagged: tuple[Category, ...]
    verdict: OutputVerdict | None
    reason: str


def decide_output(prompt: PromptDecision, verdict: OutputVerdict | None) -> OutputDecision:
    """Apply the policy of ``prompt`` to the output guard's verdict on one image (``None``: no
    output guard). See :func:`output_outcome`."""
    return output_outcome(verdict, prompt.policy.actions, prompt.blur_output, prompt.reason())


def output_outcome(
    verdict: OutputVerdict | None,
    actions: Mapping[Category, GuardAction],
    blur_all: bool = False,
    blur_reason: str = "",
) -> OutputDecision:
    """A category the output guard flags takes its policy action: ``block`` withholds the image,
    ``blur`` obscures it, ``align``/``allow`` let it pass (reported). ``blur_all`` (a prompt-level
    ``blur``) obscures the image whatever the output guard says."""
    flagged = verdict.flagged if verdict is not None else ()
    action = strictest([actions[c] for c in flagged], default="allow")
    described = _describe(flagged, verdict.scores, actions) if verdict is not None else ""
    if action == "block":
        return OutputDecision(
            "withhold", "output_guard", flagged, verdict, f"output guard flagged {described}"
        )
    if action == "blur":
        return OutputDecision("blur", "output_guard", flagged, verdict, f"output guard flagged {described}")
    if blur_all:
        return OutputDecision("blur", "prompt_guard", flagged, verdict, blur_reason)
    reason = f"output guard flagged {described}; passed" if flagged else "output guard passed the image"
    return OutputDecision("pass", "none", flagged, verdict, reason)


def guard_report(prompt: PromptDecision, outputs: list[OutputDecision] | None = None) -> dict:
    """The ``guard`` object of a response: final action, acting layer, categories, reason, scores."""
    outputs = outputs or []
    report = {
        "prompt_guard": {**prompt.scores.to_json(), "flagged": list(prompt.flagged), "action": prompt.action},
        "output_guard": [_output_json(o) for o in outputs],
        "policy": prompt.policy.to_json(),
    }
    acted = [o for o in outputs if o.layer == "output_guard"]
    if not prompt.generate:
        head = {"action": "block", "layer": "prompt_guard", "categories": list(prompt.flagged)}
        return {**head, "reason": "refused: " + prompt.reason(), **report}
    if acted:
        worst = max(acted, key=lambda o: ("pass", "blur", "withhold").index(o.action))
        final = "block" if worst.action == "withhold" else "blur"
        categories = sorted({c for o in acted for c in o.flagged})
        head = {"action": final, "layer": "output_guard", "categories": categories}
        return {**head, "reason": worst.reason, **report}
    layer: Layer = (
        "prompt_guard" if prompt.blur_output else "model" if prompt.adapter == "aligned" else "none"
    )
    head = {"action": prompt.action, "layer": layer, "categories": list(prompt.flagged)}
    return {**head, "reason": prompt.reason(), **report}


def _output_json(decision: OutputDecision) -> dict:
    verdict = decision.verdict.to_json() if decision.verdict is not None else None
    return {"action": decision.action, "layer": decision.layer, "verdict": verdict}


def _describe(
    flagged: tuple[Category, ...],
    scores: Mapping[Category, float],
    actions: Mapping[Category, GuardAction],
    thresholds: Mapping[Category, float] | None = None,
) -> str:
    """``hate (score 0.93, threshold 0.41, policy block)``; output guards keep their own thresholds."""
    parts = []
    for c in flagged:
        threshold = f", threshold {thresholds[c]:.2f}" if thresholds is not None else ""
        parts.append(f"{c} (score {scores.get(c, 0.0):.2f}{threshold}, policy {actions[c]})")
    return ", ".join(parts)
