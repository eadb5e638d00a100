"""The guard policy: per category an action, per deployment and (within bounds) per request.

Actions, loosest to strictest: ``allow`` (the base model, no intervention), ``align`` (the aligned
model: merged safety LoRA), ``blur`` (generate with the aligned model, then obscure the image),
``block`` (refuse). When several categories are flagged, the strictest action wins.

Layers, in request order: the **prompt guard** (before generation), the **model** (the aligned
adapter), the **output guard** (after generation). Every outcome names the layer that acted and
the category scores behind it, and never repeats the prompt or the withheld image.

Requests may make the policy stricter freely; they may relax a category's action only down to the
operator's ``request_floor`` and may never raise a threshold (a higher threshold flags less).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from alignguard.config.schema import GuardAction, GuardSection
from alignguard.data.taxonomy import CATEGORIES, Category, normalize_category
from alignguard.guards.head import Thresholds

ACTIONS: tuple[GuardAction, ...] = ("allow", "align", "blur", "block")
Layer = Literal["prompt_guard", "model", "output_guard", "none"]


class OverrideNotAllowedError(ValueError):
    """A request asked for more than the operator allows (or for something malformed)."""


def strictness(action: GuardAction) -> int:
    return ACTIONS.index(action)


def strictest(actions: list[GuardAction], default: GuardAction) -> GuardAction:
    return max(actions, key=strictness) if actions else default


@dataclass(frozen=True)
class PromptScores:
    """The prompt guard's reading of one prompt: ``unsafe`` in [0, 1] and, per category, the
    probability that the prompt is unsafe in that category (unsafe x P(category | unsafe))."""

    unsafe: float
    categories: dict[Category, float]

    def to_json(self) -> dict:
        return {
            "unsafe": round(self.unsafe, 4),
            "categories": {c: round(s, 4) for c, s in self.categories.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping) -> PromptScores:
        return cls(float(data["unsafe"]), {_category(c): float(v) for c, v in data["categories"].items()})


@dataclass(frozen=True)
class EffectivePolicy:
    """The policy in force for one request: operator's config, calibrated thresholds, overrides."""

    actions: dict[Category, GuardAction]
    thresholds: dict[Category, float]
    unsafe_threshold: float
    benign_action: GuardAction

    def to_json(self) -> dict:
        return {
            "actions": dict(self.actions),
            "thresholds": {c: round(t, 4) for c, t in self.thresholds.items()},
            "unsafe_threshold": round(self.unsafe_threshold, 4),
            "benign_action": self.benign_action,
        }

    @classmethod
    def from_json(cls, data: Mapping) -> EffectivePolicy:
        return cls(
            actions={_category(c): _action(a) for c, a in data["actions"].items()},
            thresholds={_category(c): float(t) for c, t in data["thresholds"].items()},
            unsafe_threshold=float(data["unsafe_threshold"]),
            benign_action=_action(data["benign_action"]),
        )


@dataclass(frozen=True)
class RequestOverrides:
    """What a request asks for: per-category actions and thresholds (validated by :func:`resolve_policy`)."""

    actions: dict[Category, GuardAction] = field(default_factory=dict)
    thresholds: dict[Category, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping | None) -> RequestOverrides:
        """Parse ``{"actions": {"sexual": "block"}, "thresholds": {"hate": 0.2}}`` (unknown keys rejected)."""
        if not data:
            return cls()
        if not isinstance(data, Mapping):
            raise OverrideNotAllowedError(
                "guard overrides must be an object with 'actions' and/or 'thresholds'"
            )
        unknown = set(data) - {"actions", "thresholds"}
        if unknown:
            raise OverrideNotAllowedError(f"unknown guard override key(s): {', '.join(sorted(unknown))}")
        actions = {_category(k): _action(v) for k, v in dict(data.get("actions") or {}).items()}
        thresholds = {_category(k): _probability(k, v) for k, v in dict(data.get("thresholds") or {}).items()}
        return cls(actions, thresholds)


def resolve_policy(
    section: GuardSection, calibrated: Thresholds, overrides: RequestOverrides | None = None
) -> EffectivePolicy:
    """The policy for one request. Raises :class:`OverrideNotAllowedError` when the request asks
    to relax an action below the operator's floor, to raise a threshold, or to override at all
    when the operator disabled overrides."""
    overrides = overrides or RequestOverrides()
    if (overrides.actions or overrides.thresholds) and not section.allow_request_overrides:
        raise OverrideNotAllowedError("this deployment does not accept per-request guard overrides")
    actions: dict[Category, GuardAction] = {}
    thresholds: dict[Category, float] = {}
    for category in CATEGORIES:
        rule = getattr(section.policy, category)
        actions[category] = _requested_action(category, rule.action, rule.request_floor, overrides.actions)
        operator_threshold = rule.threshold if rule.threshold is not None else calibrated.categories[category]
        requested = overrides.thresholds.get(category)
        if requested is not None and requested > operator_threshold:
            raise OverrideNotAllowedError(
                f"threshold for {category} may only be lowered (stricter): asked {requested:.3f}, "
                f"deployment uses {operator_threshold:.3f}"
            )
        thresholds[category] = requested if requested is not None else operator_threshold
    unsafe = section.unsafe_threshold if section.unsafe_threshold is not None else calibrated.unsafe
    return EffectivePolicy(actions, thresholds, unsafe, section.benign_action)


def _requested_action(
    category: Category,
    action: GuardAction,
    floor: GuardAction | None,
    requested: Mapping[Category, GuardAction],
) -> GuardAction:
    wanted = requested.get(category)
    if wanted is None:
        return action
    loosest = floor or action
    if strictness(wanted) < strictness(loosest):
        raise OverrideNotAllowedError(
            f"action for {category} may not be relaxed to {wanted!r} on this deployment "
            f"(configured {action!r}, loosest allowed {loosest!r})"
        )
    return wanted


def _category(name: object) -> Category:
    try:
        return normalize_category(str(name))
    except ValueError as exc:
        raise OverrideNotAllowedError(str(exc)) from None


def _action(value: object) -> GuardAction:
    if value not in ACTIONS:
        raise OverrideNotAllowedError(f"unknown action {value!r}; expected one of {', '.join(ACTIONS)}")
    return value  # type: ignore[return-value]


def _probability(key: object, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise OverrideNotAllowedError(f"threshold for {key} must be a number in [0, 1], got {value!r}")
    return float(value)
