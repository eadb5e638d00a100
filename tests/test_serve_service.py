"""The ingress's request logic (:class:`serve.service.Service`) and its HTTP API (:mod:`serve.api`)
in process: FastAPI's ``TestClient`` and fake deployment handles (``serve_fakes``), no Ray.
The same service on Ray Serve over real HTTP: ``test_serve_http.py``."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_fakes import BrokenGuard, FakeGenerator, FakeHandle, MarkerGuard, PolicyGuard, fake_images
from serve_support import random_run_dir

from alignguard.config import load_config
from serve.adapters import AdapterError
from serve.api import build_api
from serve.encoding import decode_image
from serve.engine import GenerationFailed, Job
from serve.guards import Guards
from serve.schemas import GenerateRequest
from serve.service import Service, load_tokenizer

API_KEY = "test-key"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return random_run_dir(tmp_path_factory.mktemp("run"), experts=["hate", "violence"])


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(load_config("configs/toy.yaml").model)


@pytest.fixture
def make(run_dir, tokenizer):
    """``make(*overrides, prompt_guard=, image_guard=, policy_aware=, api_key=)``: a service on the
    toy config over a fake generator, its TestClient, and the generator (to inspect or break)."""

    def build(*overrides, prompt_guard=None, image_guard=None, policy_aware=False, api_key=None):
        from serve.adapters import AdapterCatalog

        config = load_config("configs/toy.yaml", [f"run.output_dir={run_dir}", *overrides])
        generator = FakeGenerator()
        guards = Guards(
            FakeHandle(prompt_guard) if prompt_guard is not None else None,
            FakeHandle(image_guard) if image_guard is not None else None,
            timeout_s=5.0,
            policy_aware=policy_aware,
        )
        catalog = AdapterCatalog.discover(str(run_dir), config.serve)
        service = Service(FakeHandle(generator), config, catalog, tokenizer, guards)
        service.api_key = api_key
        return TestClient(build_api(service)), service, generator

    return build


def generated(response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [decode_image(base64.b64decode(image["data"])) for image in response.json()["images"]]


# -- a valid request ---------------------------------------------------------------------------


def test_a_valid_request_becomes_one_job_with_the_service_defaults(make):
    client, service, generator = make()
    response = client.post("/v1/generate", json={"prompt": "a red bar", "seed": 7, "num_images": 2})
    images = generated(response)
    (job,) = generator.jobs
    limits = service.serve.limits
    assert (job.prompt, job.seed, job.num_images, job.adapter) == ("a red bar", 7, 2, "merged")
    assert (job.steps, job.guidance, job.width, job.height) == (limits.default_steps, 5.0, 32, 32)
    assert job.deadline > 0 and job.negative_prompt == "" and job.lora_scale == 1.0
    assert all(np.array_equal(a, b) for a, b in zip(images, fake_images(job), strict=True))  # PNG: exact
    body = response.json()
    assert [image["seed"] for image in body["images"]] == [7, 8]
    assert body["adapter"] == "merged" and body["aligned"] is True and body["base_only"] is False
    assert (body["format"], body["media_type"], body["steps"], body["width"]) == ("png", "image/png", 10, 32)
    assert body["prompt_verdict"] is None and set(body["timings"]) >= {"total_s", "batch_requests"}
    assert generator.calls[0][1] is None  # the default adapter is fused everywhere: no routing hint


def test_experts_are_routed_by_their_canonical_name_and_binary_answers_carry_metadata(make):
    client, _, generator = make()
    body = {
        "prompt": "a red bar",
        "seed": 3,
        "adapter": "violence+hate",
        "response": "binary",
        "format": "webp",
    }
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 200 and response.headers["content-type"] == "image/webp"
    assert response.headers["x-alignguard-adapter"] == "hate+violence"
    assert json.loads(response.headers["x-alignguard-metadata"])["seed"] == 3
    assert decode_image(response.content).shape == (32, 32, 3)
    assert generator.calls[0][1] == "hate+violence"  # the multiplexed model id picks the replica


def test_the_request_model_is_static_and_a_service_binds_its_bounds(make):
    plain = GenerateRequest(prompt="a red bar")  # serve.limits' own defaults, no service
    assert (plain.steps, plain.width, plain.format) == (25, 512, "png")
    _, service, _ = make("serve.limits.max_steps=30", "serve.image_format=jpeg")
    bound = service.request_model
    assert issubclass(bound, GenerateRequest) and bound.__name__ == "GenerateRequest"
    assert (bound(prompt="x").steps, bound(prompt="x").format) == (10, "jpeg")
    assert bound(prompt="x", steps=30).steps == 30
    GenerateRequest(prompt="x", steps=31)  # the bound belongs to the service, not the class
    with pytest.raises(ValueError, match="less than or equal to 30"):
        bound(prompt="x", steps=31)


def test_openapi_names_generate_request_and_shows_the_configured_bounds(make):
    client, service, _ = make("serve.limits.max_steps=30", "serve.limits.max_images=2")
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["GenerateRequest"]
    route = client.get("/openapi.json").json()["paths"]["/v1/generate"]["post"]
    assert route["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/GenerateRequest")
    fields, limits = request["properties"], service.serve.limits
    assert (fields["steps"]["maximum"], fields["steps"]["default"]) == (30, limits.default_steps)
    assert (fields["width"]["minimum"], fields["width"]["maximum"], fields["width"]["default"]) == (
        16,
        64,
        32,
    )
    assert fields["num_images"]["maximum"] == 2 and fields["prompt"]["maxLength"] == limits.max_prompt_chars
    assert fields["negative_prompt"]["anyOf"][0]["maxLength"] == limits.max_prompt_chars
    assert (fields["lora_scale"]["minimum"], fields["lora_scale"]["maximum"]) == (0.5, 1.5)
    assert all(field.get("description") for field in fields.values())  # every field documented
    assert request["required"] == ["prompt"] and request["additionalProperties"] is False


# -- validation: status, error code and message, as clients see them -------------------------

LE, GE = "Input should be less than or equal to", "Input should be greater than or equal to"
INVALID = [
    ({"prompt": ""}, "prompt: String should have at least 1 character"),
    ({"prompt": "   "}, "prompt: Value error, must contain some text"),
    ({"prompt": "x" * 1001}, "prompt: String should have at most 1000 characters"),
    (
        {"prompt": "a", "negative_prompt": "x" * 1001},
        "negative_prompt: String should have at most 1000 characters",
    ),
    ({"prompt": "a", "steps": 51}, f"steps: {LE} 50"),
    ({"prompt": "a", "steps": 0}, f"steps: {GE} 1"),
    ({"prompt": "a", "steps": "10"}, "steps: Input should be a valid integer"),
    ({"prompt": "a", "steps": None}, "steps: Input should be a valid integer"),
    ({"prompt": "a", "guidance": -1}, f"guidance: {GE} 0"),
    ({"prompt": "a", "guidance": 20.5}, f"guidance: {LE} 20"),
    ({"prompt": "a", "width": 36}, "width: Input should be a multiple of 8"),
    ({"prompt": "a", "width": 8}, f"width: {GE} 16"),
    ({"prompt": "a", "height": 72}, f"height: {LE} 64"),
    ({"prompt": "a", "num_images": 5}, f"num_images: {LE} 4"),
    ({"prompt": "a", "lora_scale": 9}, f"lora_scale: {LE} 1.5"),
    ({"prompt": "a", "lora_scale": 0.25}, f"lora_scale: {GE} 0.5"),
    ({"prompt": "a", "seed": -5}, f"seed: {GE} 0"),
    ({"prompt": "a", "format": "gif"}, "format: Input should be 'png', 'jpeg' or 'webp'"),
    ({"prompt": "a", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"prompt": "a", "adapter": "x" * 200}, "adapter: String should have at most 128 characters"),
    ([1, 2, 3], "body: Input should be a valid dictionary or object to extract fields from"),
    (
        {"prompt": "", "steps": 99, "width": 36, "colour": 1},
        f"prompt: String should have at least 1 character; steps: {LE} 50; "
        "width: Input should be a multiple of 8; colour: Extra inputs are not permitted",
    ),
    (
        {"prompt": "word " * 40},
        "prompt is 122 tokens; this model reads at most 16 (start and end tokens included)",
    ),
    (
        {"prompt": "a", "num_images": 2, "response": "binary"},
        "response 'binary' returns one image: set num_images 1",
    ),
]


@pytest.mark.parametrize(("body", "message"), INVALID, ids=[str(i) for i in range(len(INVALID))])
def test_invalid_requests_get_422_with_a_message_that_names_the_field(make, body, message):
    client, _, generator = make()
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid_request" and response.json()["message"] == message
    assert not generator.jobs


def test_unreadable_bodies_and_refused_adapters(make):
    client, _, generator = make()
    raw = {"content-type": "application/json"}
    not_json = client.post("/v1/generate", content="{prompt:", headers=raw)
    assert not_json.status_code == 422 and not_json.json()["message"] == "the body is not valid JSON"
    nan = client.post("/v1/generate", content='{"prompt": "a", "guidance": NaN}', headers=raw)
    assert nan.status_code == 422 and nan.json()["message"] == "guidance: Input should be a finite number"
    refused = {
        "../../etc/passwd": (422, "invalid_adapter"),
        "hate+hate": (422, "invalid_adapter"),
        "harassment": (404, "adapter_unavailable"),  # a category without a trained expert
        "none": (403, "adapter_forbidden"),  # serve.allow_no_adapter is false
    }
    for adapter, (status, error) in refused.items():
        response = client.post("/v1/generate", json={"prompt": "a", "adapter": adapter})
        assert (response.status_code, response.json()["error"]) == (status, error), adapter
    assert not generator.jobs


def test_api_key_body_size_and_unknown_routes(make):
    client, _, _ = make("serve.limits.max_body_bytes=1000", api_key=API_KEY)
    assert client.post("/v1/generate", json={"prompt": "a"}).status_code == 401
    assert client.post("/v1/generate", json={"prompt": "a"}, headers={"X-API-Key": "nope"}).status_code == 401
    good = {"Authorization": f"Bearer {API_KEY}"}
    assert client.post("/v1/generate", json={"prompt": "a"}, headers=good).status_code == 200
    assert client.get("/healthz").status_code == 200  # open
    huge = client.post("/v1/generate", content=b"x" * 2000, headers=good)
    assert huge.status_code == 413 and huge.json()["message"] == "the body is 2000 bytes; at most 1000"
    assert client.get("/v1/generate", headers=good).json()["error"] == "method_not_allowed"
    assert client.get("/nope", headers=good).status_code == 404


# -- guards ------------------------------------------------------------------------------------


def test_plain_guards_refuse_prompts_before_and_withhold_images_after_generation(make):
    client, _, generator = make(prompt_guard=MarkerGuard(), image_guard=MarkerGuard())
    refused = client.post("/v1/generate", json={"prompt": "a forbidden red bar"})
    assert refused.status_code == 400 and refused.json()["error"] == "prompt_refused"
    assert refused.json()["message"] == "marker word" and refused.json()["detail"]["scores"] == {"test": 1.0}
    assert not generator.jobs  # refused before anything was generated
    withheld = client.post("/v1/generate", json={"prompt": "a secret red bar", "num_images": 2}).json()
    assert [(i["withheld"], i["data"]) for i in withheld["images"]] == [(True, None), (True, None)]
    binary = client.post("/v1/generate", json={"prompt": "a secret bar", "response": "binary"})
    assert binary.status_code == 400 and binary.json()["error"] == "image_refused"
    fine = client.post("/v1/generate", json={"prompt": "a red bar"}).json()
    assert fine["images"][0]["verdict"] == {
        "allowed": True,
        "category": None,
        "scores": {"test": 0.0},
        "reason": None,
        "guard": "marker",
    }


def test_a_guard_that_cannot_answer_fails_the_request_closed(make):
    client, _, generator = make("serve.retry_after_s=3", prompt_guard=BrokenGuard())
    response = client.post("/v1/generate", json={"prompt": "a red bar"})
    assert response.status_code == 503 and response.json()["error"] == "guard_unavailable"
    assert response.headers["retry-after"] == "3" and not generator.jobs


def policy(adapter: str | None, **extra) -> dict:
    """A policy-aware prompt verdict (the shape of ``serve.guard_deployments.prompt_verdict``)."""
    return {"allowed": True, "guard": "prompt_guard", "adapter": adapter, "decision": {"id": 1}, **extra}


@pytest.mark.parametrize(
    ("verdict", "requested", "served", "aligned"),
    [
        (policy("base", action="allow"), None, "none", False),  # the operator allows: base model
        (policy("aligned", action="align"), "none", "merged", True),  # unaligned asked, aligned given
        (policy("aligned", action="align"), "hate", "hate", True),  # an expert is aligned already
        (policy(None), "hate", "hate", True),  # no routing in the verdict: the request's own adapter
        (policy(None), None, "merged", True),
    ],
)
def test_policy_guard_routes_the_adapter(make, verdict, requested, served, aligned):
    guard = PolicyGuard(verdict)
    client, _, generator = make(
        "serve.allow_no_adapter=true", prompt_guard=guard, image_guard=guard, policy_aware=True
    )
    body = {"prompt": "a red bar", **({"adapter": requested} if requested else {})}
    answer = client.post("/v1/generate", json=body).json()
    assert (answer["adapter"], answer["aligned"], generator.jobs[0].adapter) == (served, aligned, served)
    assert answer["lora_scale"] == (1.0 if aligned else 0.0)
    assert answer["prompt_verdict"]["adapter"] == verdict["adapter"]
    assert answer["guard"] == {"decision": {"id": 1}, "layer": "output_guard"}  # apply() saw the decision


def test_base_routing_does_not_need_the_clients_allow_no_adapter_switch(make):
    guard = PolicyGuard(policy("base", action="allow"))
    client, _, generator = make(prompt_guard=guard, image_guard=guard, policy_aware=True)
    answer = client.post("/v1/generate", json={"prompt": "a red bar"}).json()
    assert answer["adapter"] == "none" and generator.jobs[0].adapter == "none"
    assert client.post("/v1/generate", json={"prompt": "a", "adapter": "none"}).status_code == 403


def test_policy_guard_blocks_refuses_overrides_and_withholds(make):
    guard = PolicyGuard({"allowed": False, "category": "hate", "reason": "hate (score 0.97, policy block)"})
    client, _, generator = make(prompt_guard=guard, image_guard=guard, policy_aware=True)
    blocked = client.post("/v1/generate", json={"prompt": "a hateful red bar"})
    assert blocked.status_code == 400 and blocked.json()["message"] == "hate (score 0.97, policy block)"
    assert blocked.json()["detail"]["category"] == "hate" and "hateful" not in blocked.text
    guard.verdict = {"allowed": False, "error": "override_not_allowed", "reason": "no 'allow' for sexual"}
    override = client.post("/v1/generate", json={"prompt": "a red bar"})
    assert (override.status_code, override.json()["error"]) == (403, "override_not_allowed")
    assert override.json()["message"] == "no 'allow' for sexual" and not generator.jobs
    guard.verdict = policy("aligned", action="blur", decision={"withhold_first": True})
    answer = client.post("/v1/generate", json={"prompt": "a red bar", "num_images": 2}).json()
    assert [image["withheld"] for image in answer["images"]] == [True, False]
    assert answer["images"][0]["verdict"]["action"] == "withhold"


# -- the generator's failures, health ----------------------------------------------------------


def test_generator_failures_become_http_errors(make):
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import BackPressureError

    client, _, generator = make("serve.request_timeout_s=0.2", "serve.retry_after_s=1")
    cases = [
        (
            "answer",
            GenerationFailed("the pipeline broke"),
            500,
            "generation_failed",
            "GenerationFailed: the pipeline broke",
        ),
        (
            "answer",
            AdapterError("expert 'hate' is gone", 404),
            404,
            "adapter_unavailable",
            "expert 'hate' is gone",
        ),
        ("error", BackPressureError(num_queued_requests=4, max_queued_requests=4), 503, "overloaded", None),
        (
            "error",
            RayActorError(),
            503,
            "unavailable",
            "no generator replica could serve this: RayActorError",
        ),
    ]
    for attribute, failure, status, error, message in cases:
        generator.answer = generator.error = None
        setattr(generator, attribute, failure)
        response = client.post("/v1/generate", json={"prompt": "a red bar"})
        assert (response.status_code, response.json()["error"]) == (status, error), response.text
        assert message is None or response.json()["message"] == message
        assert status != 503 or response.headers["retry-after"] == "1"
    generator.error, generator.hold = None, True
    late = client.post("/v1/generate", json={"prompt": "a red bar"})
    assert late.status_code == 504
    assert late.json() == {
        "error": "timeout",
        "message": "no images within serve.request_timeout_s = 0.2 s",
        "detail": None,
    }


def test_health_reports_the_generator(make):
    from ray.serve.exceptions import BackPressureError

    client, _, generator = make(prompt_guard=MarkerGuard())
    health = client.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {
        "status": "ok",
        "model": "toy",
        "default_adapter": "merged",
        "base_only": False,
        "guards": {"prompt": True, "image": False},
        "generator": {"mode": "fused", "merged_fused": True, "default": "merged", "resident_adapters": []},
    }
    generator.describe_error = BackPressureError(num_queued_requests=1, max_queued_requests=1)
    busy = client.get("/healthz")
    assert busy.status_code == 200 and (busy.json()["status"], busy.json()["generator"]) == ("busy", None)
    generator.describe_error = RuntimeError("replica gone")
    down = client.get("/healthz")
    assert down.status_code == 503 and down.json()["generator"] == "RuntimeError: replica gone"
    adapters = client.get("/v1/adapters").json()
    assert adapters["default"] == "merged" and adapters["lora_scale"] == {"min": 0.5, "max": 1.5}


def test_service_generate_is_callable_without_http(make):
    """The seam itself: a validated request in, an Outcome out, no FastAPI involved."""
    import asyncio

    _, service, generator = make()
    request = service.request_model.model_validate({"prompt": "a red bar", "seed": 1})
    outcome = asyncio.run(service.generate(request))
    assert outcome.metadata["seeds"] == [1] and outcome.verdicts == [None]
    assert decode_image(outcome.images[0]).shape == (32, 32, 3)
    assert isinstance(generator.jobs[0], Job)
