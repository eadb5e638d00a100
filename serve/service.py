"""What the ingress does with a request: validate, guard, generate (remotely), guard, encode.

Pure request logic over a generator *handle*: the Serve deployment (:mod:`serve.ingress`) and
the HTTP routes (:mod:`serve.api`) are thin layers around :class:`Service`. Every failure becomes
a :class:`ServiceError` with an HTTP status and a message; nothing escapes as a bare 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignguard.config.schema import ExperimentConfig, ModelSection
from serve.adapters import NONE, AdapterCatalog, AdapterError, AdapterPlan
from serve.encoding import encode_images
from serve.engine import Job, JobResult
from serve.guards import Guards, GuardUnavailable, Verdict
from serve.schemas import MAX_SEED, MEDIA_TYPES, GenerateRequest, RequestBounds


class ServiceError(Exception):
    """A request that cannot be served; ``status`` and ``error`` go into the HTTP answer."""

    def __init__(
        self, status: int, error: str, message: str, detail: Any = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.error, self.message = status, error, message
        self.detail, self.headers = detail, headers or {}


@dataclass
class Outcome:
    """A served request: encoded images plus everything the JSON answer reports."""

    images: list[bytes | None]
    verdicts: list[Verdict | None]
    metadata: dict = field(default_factory=dict)


def load_tokenizer(model: ModelSection):
    """The model's (first) tokenizer, to count prompt tokens before anything is queued."""
    from transformers import AutoTokenizer

    from alignguard.families import resolve_model_path

    kwargs = {"revision": model.revision} if model.revision else {}
    return AutoTokenizer.from_pretrained(resolve_model_path(model), subfolder="tokenizer", **kwargs)


def token_limit(tokenizer, configured: int | None) -> int:
    """``serve.limits.max_prompt_tokens`` or the tokenizer's own limit (77 for CLIP)."""
    if configured is not None:
        return configured
    own = getattr(tokenizer, "model_max_length", None)
    return own if isinstance(own, int) and 0 < own < 100_000 else 77


def _unavailable_exceptions() -> tuple[type[BaseException], ...]:
    from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError, ReplicaUnavailableError

    return (
        ActorDiedError,
        ActorUnavailableError,
        RayActorError,
        DeploymentUnavailableError,
        ReplicaUnavailableError,
    )


class Service:
    """One ingress replica's request logic."""

    def __init__(
        self, generator: Any, config: ExperimentConfig, catalog: AdapterCatalog, tokenizer, guards: Guards
    ) -> None:
        self.generator = generator
        self.config = config
        self.serve = config.serve
        self.catalog = catalog
        self.tokenizer = tokenizer
        self.max_tokens = token_limit(tokenizer, self.serve.limits.max_prompt_tokens)
        self.guards = guards
        # The request model FastAPI validates with: GenerateRequest with this service's bounds.
        self.request_model = GenerateRequest.for_service(RequestBounds.from_config(config))
        self.api_key: str | None = None

    # -- validation beyond the request model --------------------------------------------------

    def check_tokens(self, field_name: str, text: str | None) -> None:
        if not text:
            return
        count = len(self.tokenizer(text, truncation=False).input_ids)
        if count > self.max_tokens:
            raise ServiceError(
                422,
                "invalid_request",
                f"{field_name} is {count} tokens; this model reads at most {self.max_tokens} "
                "(start and end tokens included)",
                detail=[{"loc": ["body", field_name], "msg": "too many tokens", "type": "too_long"}],
            )

    def resolve_adapter(self, name: str | None) -> AdapterPlan:
        try:
            return self.catalog.resolve(name)
        except AdapterError as exc:
            error = {403: "adapter_forbidden", 404: "adapter_unavailable"}.get(exc.status, "invalid_adapter")
            raise ServiceError(exc.status, error, str(exc)) from None

    def make_job(self, request: GenerateRequest, plan: AdapterPlan, deadline: float = 0.0) -> Job:
        if request.response == "binary" and request.num_images != 1:
            raise ServiceError(
                422, "invalid_request", "response 'binary' returns one image: set num_images 1"
            )
        self.check_tokens("prompt", request.prompt)
        self.check_tokens("negative_prompt", request.negative_prompt)
        seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED - 64)
        return Job(
            prompt=request.prompt,
            seed=seed,
            num_images=request.num_images,
            steps=request.steps,
            guidance=request.guidance,
            width=request.width,
            height=request.height,
            negative_prompt=request.negative_prompt or "",
            adapter=plan.name,
            lora_scale=request.lora_scale,
            deadline=deadline,
        )

    # -- the request ---------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> Outcome:
        """Serve one validated ``GenerateRequest``; raises :class:`ServiceError`."""
        start = time.perf_counter()
        deadline = start + self.serve.request_timeout_s
        plan = self.resolve_adapter(request.adapter)
        job = self.make_job(request, plan, deadline=time.time() + self.serve.request_timeout_s)
        guard_start = time.perf_counter()
        prompt_verdict = await self._guarded(self.guards.check_prompt(job.prompt, request.negative_prompt))
        if prompt_verdict is not None and not prompt_verdict.allowed:
            self._refuse(prompt_verdict)
        plan = self.route(plan, prompt_verdict)
        job = dataclasses.replace(job, adapter=plan.name)
        guard_s = time.perf_counter() - guard_start
        result = await self._remote_generate(job, plan, deadline)
        guard_start = time.perf_counter()
        shown, verdicts, report = await self._check_outputs(result.images, job.prompt, prompt_verdict)
        guard_s += time.perf_counter() - guard_start
        encode_start = time.perf_counter()
        images = await asyncio.to_thread(self._encode_shown, shown, verdicts, request.format)
        encode_s = time.perf_counter() - encode_start
        total_s = time.perf_counter() - start
        metadata = self._metadata(request, job, plan, result, prompt_verdict)
        if report is not None:
            metadata["guard"] = report
        metadata["timings"] = {
            "total_s": round(total_s, 4),
            "queue_s": round(max(0.0, total_s - result.generate_s - encode_s - guard_s), 4),
            "generate_s": round(result.generate_s, 4),
            "encode_s": round(encode_s, 4),
            "guard_s": round(guard_s, 4),
            "batch_images": result.batch_images,
            "batch_requests": result.batch_requests,
            **{key: round(value, 4) for key, value in result.extra.items()},
        }
        return Outcome(images, verdicts, metadata)

    def _metadata(
        self, request: GenerateRequest, job: Job, plan: AdapterPlan, result: JobResult, verdict
    ) -> dict:
        return {
            "request_id": uuid.uuid4().hex,
            "format": request.format,
            "media_type": MEDIA_TYPES[request.format],
            "adapter": result.adapter,
            "aligned": not plan.is_none,
            "base_only": self.catalog.base_only,
            "lora_scale": job.lora_scale if not plan.is_none else 0.0,
            "seed": job.seed,
            "seeds": job.seeds,
            "steps": job.steps,
            "guidance": job.guidance,
            "width": job.width,
            "height": job.height,
            "prompt_verdict": verdict.model_dump() if verdict is not None else None,
        }

    def _refuse(self, verdict: Verdict) -> None:
        """A refused prompt: 400 with the reason and scores (never the prompt); 403 when a request
        tried to relax the operator's guard policy beyond what it allows."""
        extra = verdict.model_extra or {}
        if extra.get("error") == "override_not_allowed":
            raise ServiceError(403, "override_not_allowed", verdict.reason or "guard override not allowed")
        reason = verdict.reason or "the prompt guard refused this prompt"
        raise ServiceError(400, "prompt_refused", reason, detail=verdict.model_dump())

    def route(self, plan: AdapterPlan, verdict: Verdict | None) -> AdapterPlan:
        """The adapter the guard policy asks for: ``base`` (an ``allow``ed category: the operator's
        policy, so the client-facing ``allow_no_adapter`` switch does not apply) or ``aligned``
        (an unaligned request is moved to the default, aligned adapter)."""
        wanted = (verdict.model_extra or {}).get("adapter") if verdict is not None else None
        if wanted == "base":
            return self.catalog.resolve(NONE, explicit=False)
        if wanted == "aligned" and plan.is_none:
            return self.catalog.default
        return plan

    async def _check_outputs(self, images: np.ndarray, prompt: str, verdict: Verdict | None):
        """(images to show — blurred or None where the policy says — verdicts, guard report)."""
        decision = (verdict.model_extra or {}).get("decision") if verdict is not None else None
        if self.guards.policy_aware:
            applied = await self._guarded(self.guards.apply_images(images, decision))
            if applied is not None:
                verdicts = [Verdict.model_validate(v) for v in applied["outputs"]]
                return applied["images"], verdicts, applied.get("report")
        verdicts = await self._guarded(self.guards.check_images(images, prompt))
        verdicts = verdicts or [None] * len(images)
        shown = [
            None if v is not None and not v.allowed else image
            for v, image in zip(verdicts, images, strict=True)
        ]
        return shown, verdicts, None

    def _encode_shown(self, shown: list, verdicts: list, image_format: str) -> list:
        present = [np.asarray(image, dtype=np.uint8) for image in shown if image is not None]
        encoded = iter(
            encode_images(np.stack(present), image_format, self.serve.image_quality) if present else []
        )
        return [None if image is None else next(encoded) for image in shown]

    async def _guarded(self, call):
        try:
            return await call
        except GuardUnavailable as exc:
            raise ServiceError(503, "guard_unavailable", str(exc), headers=self._retry_after()) from None

    def _retry_after(self) -> dict:
        return {"Retry-After": str(max(1, round(self.serve.retry_after_s)))}

    async def _remote_generate(self, job: Job, plan: AdapterPlan, deadline: float) -> JobResult:
        from ray.serve.exceptions import BackPressureError

        handle = self.generator
        if plan.experts:  # routes the request to replicas that already hold these experts
            handle = handle.options(multiplexed_model_id=plan.name)
        response = handle.generate.remote(dataclasses.replace(job, sent_at=time.time()))
        try:
            result = await asyncio.wait_for(response, max(0.0, deadline - time.perf_counter()))
            if isinstance(result, Exception):  # the generator answers a failed job with its error
                raise result
            return result
        except (TimeoutError, asyncio.TimeoutError):
            response.cancel()
            raise ServiceError(
                504, "timeout", f"no images within serve.request_timeout_s = {self.serve.request_timeout_s} s"
            ) from None
        except BackPressureError as exc:
            raise ServiceError(
                503,
                "overloaded",
                f"the service is at capacity, retry later ({exc.message})",
                headers=self._retry_after(),
            ) from None
        except AdapterError as exc:  # the replica saw different files than this ingress
            raise ServiceError(exc.status, "adapter_unavailable", str(exc)) from None
        except _unavailable_exceptions() as exc:
            raise ServiceError(
                503,
                "unavailable",
                f"no generator replica could serve this: {type(exc).__name__}",
                headers=self._retry_after(),
            ) from None
        except Exception as exc:
            raise ServiceError(
                500, "generation_failed", f"{type(exc).__name__}: {_first_line(exc)}"
            ) from None

    # -- the other routes ----------------------------------------------------------------------

    def adapters(self) -> dict:
        return {
            **self.catalog.describe(),
            "lora_scale": {"min": self.serve.limits.lora_scale_min, "max": self.serve.limits.lora_scale_max},
        }

    async def health(self) -> tuple[int, dict]:
        """200 when a generator replica answers (or is merely busy), 503 when none can."""
        from ray.serve.exceptions import BackPressureError

        body = {
            "status": "ok",
            "model": self.config.model.family,
            "default_adapter": self.catalog.default.name,
            "base_only": self.catalog.base_only,
            "guards": self.guards.names,
        }
        response = self.generator.describe.remote()
        try:
            body["generator"] = await asyncio.wait_for(response, 5.0)
        except (TimeoutError, asyncio.TimeoutError, BackPressureError):
            response.cancel()
            body["status"], body["generator"] = "busy", None
        except Exception as exc:
            body["status"], body["generator"] = "unavailable", f"{type(exc).__name__}: {_first_line(exc)}"
            return 503, body
        return 200, body


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else ""
