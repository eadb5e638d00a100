"""``guard``: defence in depth around the aligned model (prompt guard, policy, output guard)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from alignguard.config.sections.base import InputPath, Probability, Section

GuardAction = Literal["allow", "align", "blur", "block"]


class GuardCategoryPolicy(Section):
    """What happens to one category: ``allow`` (base model, no intervention), ``align`` (the aligned
    model), ``blur`` (generate, then obscure the image) or ``block`` (refuse)."""

    action: GuardAction = Field(
        "align",
        description="on a flagged prompt: allow (base model), align (aligned model), blur (generate, then "
        "obscure) or block (refuse)",
    )
    threshold: Probability | None = Field(
        None, description="prompt-guard score at which the category is flagged; null = calibrated"
    )
    request_floor: GuardAction | None = Field(
        None,
        description="the loosest action a request may ask for; null = the action itself (requests may "
        "only make it stricter)",
    )

    @model_validator(mode="after")
    def _floor_not_stricter(self) -> GuardCategoryPolicy:
        order = ("allow", "align", "blur", "block")
        if self.request_floor is not None and order.index(self.request_floor) > order.index(self.action):
            raise ValueError(
                f"request_floor {self.request_floor!r} is stricter than action {self.action!r}; "
                "a floor bounds how far a request may relax the action"
            )
        return self


_CATEGORY_POLICY = "what happens to prompts flagged in this category"


class GuardPolicySection(Section):
    """One :class:`GuardCategoryPolicy` per category of the taxonomy."""

    hate: GuardCategoryPolicy = Field(GuardCategoryPolicy(), description=_CATEGORY_POLICY)
    harassment: GuardCategoryPolicy = Field(GuardCategoryPolicy(), description=_CATEGORY_POLICY)
    violence: GuardCategoryPolicy = Field(GuardCategoryPolicy(), description=_CATEGORY_POLICY)
    self_harm: GuardCategoryPolicy = Field(GuardCategoryPolicy(), description=_CATEGORY_POLICY)
    sexual: GuardCategoryPolicy = Field(GuardCategoryPolicy(), description=_CATEGORY_POLICY)
    shocking: GuardCategoryPolicy = Field(GuardCategoryPolicy(), description=_CATEGORY_POLICY)
    illegal_activity: GuardCategoryPolicy = Field(GuardCategoryPolicy(), description=_CATEGORY_POLICY)


class GuardOutputSection(Section):
    """The output guard: NudeNet on real images, the toy judge in the toy world."""

    kind: Literal["auto", "nudenet", "toy_judge", "none"] = Field(
        "auto", description="auto: toy_judge for model.family 'toy', else nudenet"
    )
    nudenet_classes: Literal["genitalia", "exposed"] = Field(
        "genitalia",
        description="NudeNet classes that flag an image: exposed genitalia, or also breasts, buttocks, anus",
    )
    nudenet_threshold: Probability = Field(0.6, description="NudeNet detection score at which a class flags")
    toy_threshold: Probability = Field(
        0.5,
        description="toy judge: share of object pixels in a category's harm colour at which it flags",
    )
    blur_fraction: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25, description="blur radius as a fraction of the image's longer side"
    )


class GuardSection(Section):
    """Defence in depth around the aligned model: a prompt guard, the model, an output guard."""

    enabled: bool = Field(
        False, description="serve with the prompt and output guards (configs/toy-guarded.yaml)"
    )
    head_path: InputPath | None = Field(None, description="prompt-guard head (.safetensors); null = shipped")
    unsafe_threshold: Probability | None = Field(
        None, description="prompt-guard 'unsafe' score at which a prompt is flagged; null = calibrated"
    )
    benign_action: Literal["allow", "align"] = Field(
        "align", description="what unflagged prompts get: the base model (allow) or the aligned one"
    )
    allow_request_overrides: bool = Field(
        True,
        description="let requests override the policy: actions (no looser than each category's "
        "request_floor) and thresholds (only lower)",
    )
    policy: GuardPolicySection = Field(GuardPolicySection(), description="the action per category")
    output: GuardOutputSection = Field(GuardOutputSection(), description="the output guard")
