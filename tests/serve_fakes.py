"""Stand-ins for the Ray Serve deployment handles the ingress's :class:`~serve.service.Service` awaits,
so the request logic and the HTTP API run in process (FastAPI's ``TestClient``), without Ray.

A handle answers ``handle.<method>.remote(*args)`` with an awaitable that has ``cancel()`` (like a
``DeploymentResponse``) and ``handle.options(multiplexed_model_id=...)`` with a handle (like a
``DeploymentHandle``). The objects behind the handles record what they were asked.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import numpy as np

from serve.engine import Job, JobResult


class FakeResponse:
    """An awaitable call result with ``cancel()``, like Serve's ``DeploymentResponse``."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self.cancelled = False

    def __await__(self):
        return self._call.__await__()

    def cancel(self) -> None:
        self.cancelled = True


class _Method:
    def __init__(self, handle: FakeHandle, name: str) -> None:
        self.handle, self.name = handle, name

    def remote(self, *args: Any) -> FakeResponse:
        target = self.handle.target
        target.calls.append((self.name, self.handle.multiplexed_model_id, args))
        return FakeResponse(_call(getattr(target, self.name), args))


async def _call(method: Any, args: tuple) -> Any:
    """The method's result, or its exception, arrives when the response is awaited (as with Ray)."""
    result = method(*args)
    return await result if inspect.isawaitable(result) else result


class FakeHandle:
    """A deployment handle over a plain object (``target``) whose methods may be sync or async."""

    def __init__(self, target: Any, multiplexed_model_id: str | None = None) -> None:
        self.target = target
        self.multiplexed_model_id = multiplexed_model_id
        target.calls = getattr(target, "calls", [])

    def options(self, *, multiplexed_model_id: str | None = None) -> FakeHandle:
        return FakeHandle(self.target, multiplexed_model_id)

    def __getattr__(self, name: str) -> _Method:
        if name.startswith("_") or not callable(getattr(self.target, name, None)):
            raise AttributeError(name)
        return _Method(self, name)


def fake_images(job: Job) -> np.ndarray:
    """``[num_images, H, W, 3]`` uint8; image ``i`` is one flat colour derived from ``seed + i``."""
    colours = [((seed * 37) % 256, (seed * 91) % 256, (seed * 13) % 256) for seed in job.seeds]
    return np.stack([np.full((job.height, job.width, 3), colour, np.uint8) for colour in colours])


class FakeGenerator:
    """The generator deployment's interface (``generate(job)``, ``describe()``) without a pipeline.

    ``answer``: an exception to answer every job with (the real generator *returns* a failed job's
    error); ``error``: one to raise (Ray's own failures, e.g. back-pressure); ``hold``: never answer
    (the caller's timeout fires); ``describe_error``: what ``describe`` raises (health checks).
    """

    def __init__(self) -> None:
        self.calls: list = []
        self.jobs: list[Job] = []
        self.answer: Exception | None = None
        self.error: Exception | None = None
        self.hold = False
        self.describe_error: Exception | None = None

    async def generate(self, job: Job) -> JobResult | Exception:
        self.jobs.append(job)
        if self.hold:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        if self.answer is not None:
            return self.answer
        images = fake_images(job)
        return JobResult(images, job.adapter, len(images), 1, generate_s=0.01)

    async def describe(self) -> dict:
        if self.describe_error is not None:
            raise self.describe_error
        return {"mode": "fused", "merged_fused": True, "default": "merged", "resident_adapters": []}


class MarkerGuard:
    """The plain guard contract: refuses prompts with 'forbidden', withholds the images of prompts
    with 'secret' (a real guard scores content; this one tests the wiring)."""

    def check_prompt(self, prompt: str, negative_prompt: str | None) -> dict:
        refused = "forbidden" in prompt
        return {
            "allowed": not refused,
            "category": "test" if refused else None,
            "scores": {"test": float(refused)},
            "reason": "marker word" if refused else None,
            "guard": "marker",
        }

    def check_images(self, images: np.ndarray, prompt: str) -> list[dict]:
        withheld = "secret" in prompt
        return [
            {"allowed": not withheld, "scores": {"test": float(withheld)}, "guard": "marker"} for _ in images
        ]


class PolicyGuard:
    """The project's policy-aware guard deployments in miniature: ``verdict`` is what
    ``check_prompt`` answers (the test sets it), ``apply`` withholds image 0 when the decision says
    ``withhold_first`` and reports what it was given."""

    def __init__(self, verdict: dict | None = None) -> None:
        self.verdict = verdict or {"allowed": True, "guard": "prompt_guard"}

    def check_prompt(self, prompt: str, negative_prompt: str | None) -> dict:
        return self.verdict

    def apply(self, images: np.ndarray, decision: dict | None) -> dict:
        withhold = bool(decision and decision.get("withhold_first"))
        shown = [None if withhold and i == 0 else image for i, image in enumerate(images)]
        outputs = [
            {
                "allowed": image is not None,
                "guard": "output_guard",
                "action": "pass" if image is not None else "withhold",
            }
            for image in shown
        ]
        return {
            "images": shown,
            "outputs": outputs,
            "report": {"decision": decision, "layer": "output_guard"},
        }


class BrokenGuard:
    """A guard that cannot answer: requests must fail closed (503)."""

    def check_prompt(self, prompt: str, negative_prompt: str | None) -> dict:
        raise RuntimeError("guard replica died")

    def check_images(self, images: np.ndarray, prompt: str) -> list[dict]:
        raise RuntimeError("guard replica died")
