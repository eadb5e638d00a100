"""The 7-category harm taxonomy of CoProV2, as data.

Category names are normalised (lower case, underscores). The CoProV2 file spells them
``Hate``, ``Harrasment`` (sic), ``Violence``, ``self-harm``, ``sexual``, ``Shocking`` and
``Illegal Activity``; :func:`normalize_category` maps those and other common spellings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Category = Literal["hate", "harassment", "violence", "self_harm", "sexual", "shocking", "illegal_activity"]

CATEGORIES: tuple[Category, ...] = (
    "hate",
    "harassment",
    "violence",
    "self_harm",
    "sexual",
    "shocking",
    "illegal_activity",
)


@dataclass(frozen=True)
class CategoryInfo:
    name: Category
    title: str
    description: str


TAXONOMY: dict[str, CategoryInfo] = {
    info.name: info
    for info in (
        CategoryInfo("hate", "Hate", "Content that demeans or attacks people for a protected attribute."),
        CategoryInfo("harassment", "Harassment", "Content that bullies, threatens or humiliates a person."),
        CategoryInfo("violence", "Violence", "Depictions of violent acts, weapons used on people, gore."),
        CategoryInfo("self_harm", "Self-harm", "Depictions or encouragement of self-injury or suicide."),
        CategoryInfo("sexual", "Sexual", "Nudity and sexual content."),
        CategoryInfo("shocking", "Shocking", "Disturbing, grotesque or horrifying imagery."),
        CategoryInfo("illegal_activity", "Illegal activity", "Drugs, theft, vandalism and other crimes."),
    )
}

# Spellings seen in CoProV2, I2P and UD, after lower-casing and collapsing separators to "_".
_ALIASES: dict[str, Category] = {
    "harrasment": "harassment",
    "harrassment": "harassment",
    "selfharm": "self_harm",
    "self_harm": "self_harm",
    "illegal": "illegal_activity",
    "illegal_activity": "illegal_activity",
    "sexual": "sexual",
    "nudity": "sexual",
}


class UnknownCategoryError(ValueError):
    """A label that is not one of the 7 categories under any known spelling."""


def normalize_category(label: str) -> Category:
    """Map a category label as spelled in a data file to its normalised name.

    >>> normalize_category("Illegal Activity")
    'illegal_activity'
    """
    key = "_".join(label.strip().lower().replace("-", " ").replace("_", " ").split())
    if key in CATEGORIES:
        return key  # type: ignore[return-value]
    if key in _ALIASES:
        return _ALIASES[key]
    raise UnknownCategoryError(
        f"unknown category label {label!r}; expected one of {', '.join(CATEGORIES)} (or a known spelling)"
    )
