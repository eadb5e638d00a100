"""The guards as ready-to-serve objects, built from the ``guard`` config section.

:class:`PromptGuardService` turns prompts (+ optional per-request overrides) into
:class:`~alignguard.guards.decisions.PromptDecision` s; :class:`OutputGuardService` checks the
generated images against a decision and returns what may be shown (blurred or withheld as the policy
says). ``serve/guard_deployments.py`` wraps each in a CPU Ray Serve deployment; the CLI uses them
directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from alignguard.config.schema import GuardAction, GuardSection
from alignguard.data.taxonomy import CATEGORIES, Category
from alignguard.families import get_family
from alignguard.guards.blur import obscure
from alignguard.guards.decisions import OutputDecision, PromptDecision, decide_prompt, output_outcome
from alignguard.guards.output_guard import NudeNetGuard, OutputGuard, ToyJudgeGuard, as_uint8_batch
from alignguard.guards.policy import RequestOverrides, resolve_policy


def output_guard_kind(section: GuardSection, model_family: str) -> str:
    """``auto`` resolves to the family's guard: the toy judge in the toy world, NudeNet elsewhere."""
    if section.output.kind != "auto":
        return section.output.kind
    return get_family(model_family).output_guard


def build_output_guard(section: GuardSection, model_family: str = "toy") -> OutputGuard | None:
    """The output guard the section asks for (``None`` for kind ``none``)."""
    kind = output_guard_kind(section, model_family)
    if kind == "nudenet":
        return NudeNetGuard(section.output.nudenet_classes, section.output.nudenet_threshold)
    if kind == "toy_judge":
        return ToyJudgeGuard(section.output.toy_threshold)
    return None


class PromptGuardService:
    """Prompt guard + policy. ``decide`` never raises on content; bad overrides raise
    :class:`~alignguard.guards.policy.OverrideNotAllowedError` (a client error)."""

    def __init__(self, section: GuardSection, prompt_guard=None) -> None:
        from alignguard.guards.prompt_guard import PromptGuard

        self.section = section
        self.prompt_guard = prompt_guard or PromptGuard(section.head_path)

    def decide(
        self, prompts: Sequence[str], overrides: Sequence[Mapping | RequestOverrides | None] | None = None
    ) -> list[PromptDecision]:
        """One decision per prompt; ``overrides[i]`` (JSON or parsed) applies to prompt i."""
        overrides = list(overrides) if overrides is not None else [None] * len(prompts)
        if len(overrides) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(overrides)} overrides")
        thresholds = self.prompt_guard.thresholds
        policies = [
            resolve_policy(
                self.section,
                thresholds,
                o if isinstance(o, RequestOverrides) else RequestOverrides.from_json(o),
            )
            for o in overrides
        ]
        scores = self.prompt_guard.score(prompts)
        return [decide_prompt(s, p) for s, p in zip(scores, policies, strict=True)]


@dataclass(frozen=True)
class GuardedImages:
    """What may be shown: ``images[i]`` is the (possibly blurred) image or ``None`` if withheld."""

    images: list[np.ndarray | None]
    decisions: list[OutputDecision]


class OutputGuardService:
    """Output guard + policy for generated images of one prompt decision."""

    def __init__(
        self, section: GuardSection, model_family: str = "toy", guard: OutputGuard | None = None
    ) -> None:
        self.section = section
        self.guard = guard if guard is not None else build_output_guard(section, model_family)

    def operator_actions(self) -> dict[Category, GuardAction]:
        """The configured action of every category (no request overrides)."""
        return {c: getattr(self.section.policy, c).action for c in CATEGORIES}

    def apply(self, decision: PromptDecision, images: np.ndarray | Sequence[np.ndarray]) -> GuardedImages:
        """Check ``images`` (RGB, ``[N, H, W, 3]`` or a list), then blur or withhold per the
        decision's policy; a prompt-level ``blur`` obscures every image."""
        return self.apply_actions(images, decision.policy.actions, decision.blur_output, decision.reason())

    def apply_actions(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        actions: Mapping[Category, GuardAction],
        blur_all: bool = False,
        blur_reason: str = "",
    ) -> GuardedImages:
        """Check ``images`` and apply ``actions`` to what the output guard flags (see
        :func:`~alignguard.guards.decisions.output_outcome`). Returned images are uint8."""
        batch = as_uint8_batch(images)
        verdicts = self.guard.check(batch) if self.guard is not None else [None] * len(batch)
        shown: list[np.ndarray | None] = []
        decisions = []
        for image, verdict in zip(batch, verdicts, strict=True):
            outcome = output_outcome(verdict, actions, blur_all, blur_reason)
            decisions.append(outcome)
            if outcome.action == "withhold":
                shown.append(None)
            elif outcome.action == "blur":
                shown.append(obscure(image, self.section.output.blur_fraction))
            else:
                shown.append(image)
        return GuardedImages(shown, decisions)
