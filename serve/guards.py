"""Where prompt and image guards plug into the service (the guards themselves live elsewhere).

A guard is any Serve deployment (bound into the application, see
:func:`serve.app.build_application`) that exposes one of:

- ``check_prompt(prompt: str, negative_prompt: str | None) -> Verdict | dict`` — before
  generation; a refused prompt is answered 400 and nothing is generated;
- ``check_images(images: np.ndarray, prompt: str) -> list[Verdict | dict]`` — after generation,
  ``images`` ``[N, H, W, 3]`` uint8; a refused image is withheld (``data: null``) with its verdict.

A verdict carries per-category scores, so clients and logs see *why*. Guards fail closed: a
guard that errors or times out makes the request fail with 503, never pass unchecked.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class Verdict(BaseModel):
    """One guard decision. Keys beyond these (a guard's policy details: action, adapter, layer,
    ...) are kept, so an ingress or client that understands them can use them."""

    model_config = ConfigDict(extra="allow")

    allowed: bool
    category: str | None = Field(None, description="the category that decided a refusal")
    scores: dict[str, float] = Field(default_factory=dict, description="per-category scores in [0, 1]")
    reason: str | None = None
    guard: str | None = Field(None, description="which guard decided")


class GuardUnavailable(RuntimeError):
    """A configured guard could not answer: the request fails closed (503)."""


class Guards:
    """The optional guard handles of an ingress replica; absent guards allow everything."""

    def __init__(
        self, prompt: Any = None, image: Any = None, timeout_s: float = 30.0, policy_aware: bool = False
    ) -> None:
        self.prompt = prompt
        self.image = image
        self.timeout_s = timeout_s
        # The project's guard deployments (serve/guard_deployments.py) also route by adapter and
        # blur through ``apply``; other guards only allow or refuse.
        self.policy_aware = policy_aware

    @property
    def names(self) -> dict[str, bool]:
        return {"prompt": self.prompt is not None, "image": self.image is not None}

    async def check_prompt(self, prompt: str, negative_prompt: str | None) -> Verdict | None:
        if self.prompt is None:
            return None
        raw = await self._call(self.prompt.check_prompt.remote(prompt, negative_prompt), "prompt")
        return Verdict.model_validate(raw if isinstance(raw, dict) else raw.model_dump())

    async def check_images(self, images: np.ndarray, prompt: str) -> list[Verdict] | None:
        if self.image is None:
            return None
        raw = await self._call(self.image.check_images.remote(images, prompt), "image")
        verdicts = [Verdict.model_validate(v if isinstance(v, dict) else v.model_dump()) for v in raw]
        if len(verdicts) != len(images):
            raise GuardUnavailable(
                f"the image guard returned {len(verdicts)} verdicts for {len(images)} images"
            )
        return verdicts

    async def apply_images(self, images: np.ndarray, decision: dict | None) -> dict | None:
        """The policy-aware output guard: images as they may be shown, verdicts and a report."""
        if self.image is None:
            return None
        return await self._call(self.image.apply.remote(images, decision), "image")

    async def _call(self, response: Any, which: str) -> Any:
        try:
            return await asyncio.wait_for(response, self.timeout_s)
        except Exception as exc:  # fail closed, whatever went wrong
            cancel = getattr(response, "cancel", None)
            if cancel is not None:
                cancel()
            raise GuardUnavailable(f"the {which} guard did not answer: {type(exc).__name__}: {exc}") from exc
