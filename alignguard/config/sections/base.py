"""What every config section shares: the frozen base class, bounded number types, path handling."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


def _is_uri(value: str) -> bool:
    return "://" in value


def _absolute_run_location(value: str) -> str:
    """A local run directory as an absolute path; URIs unchanged.

    Resolved once, where the config is loaded (the driver): Ray workers do not share its working
    directory (Ray Train's workers chdir to their run's artifacts dir), so a relative path would
    name another directory on each of them."""
    return value if _is_uri(value) else os.path.abspath(os.path.expanduser(value))


def _absolute_if_local(value: str | None) -> str | None:
    """An input path that exists here, made absolute (see above); hub ids and URIs unchanged."""
    if value is None or _is_uri(value) or not os.path.exists(os.path.expanduser(value)):
        return value
    return os.path.abspath(os.path.expanduser(value))


def _model_location(value: str) -> str:
    """``toyworld`` names the shipped toy model even where a local ``toyworld/`` exists."""
    return value if value == TOYWORLD_MODEL else _absolute_if_local(value)


TOYWORLD_MODEL = "toyworld"
RunLocation = Annotated[str, Field(min_length=1), AfterValidator(_absolute_run_location)]
InputPath = Annotated[str, AfterValidator(_absolute_if_local)]
ModelLocation = Annotated[str, Field(min_length=1), AfterValidator(_model_location)]


class Section(BaseModel):
    """Base of every config section: immutable, strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
