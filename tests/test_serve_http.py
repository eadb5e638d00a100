"""The service on Ray Serve (the session's local cluster), called over real HTTP on a free port.

One application for the module: the toy model with random LoRAs (merged + 2 experts), an API
key, a test guard deployment in both guard slots, and small queues so a flood overflows.
The acceptance checks with the *trained* merged LoRA deploy more applications on a trained run
directory (``$ALIGNGUARD_TRAINED_RUN``, default: the package's reference run): the merged LoRA
as the default adapter, and ``configs/toy-guarded.yaml`` with the real guards and its policy.
"""

from __future__ import annotations

import base64
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from serve_support import free_port, gate_actor, gated_generator, random_run_dir

from alignguard.generation import generate
from alignguard.imaging import to_uint8
from alignguard.toyworld.reference import REFERENCE_RUN
from serve.encoding import decode_image

pytestmark = pytest.mark.slow

APP = "alignguard-test"
API_KEY_ENV = "ALIGNGUARD_TEST_API_KEY"
API_KEY = "test-key-7f3a"
TIMEOUT_S = 3.0
CLIENT_TIMEOUT_S = 60
TRAINED_RUN = Path(os.environ.get("ALIGNGUARD_TRAINED_RUN", REFERENCE_RUN))


def marker_guard():
    """A guard deployment for the plug points: refuses prompts with 'forbidden', withholds images
    of prompts with 'secret' (a real guard scores content; this one tests the wiring)."""
    from ray import serve

    @serve.deployment(name="MarkerGuard", ray_actor_options={"num_cpus": 0.05})
    class MarkerGuard:
        def check_prompt(self, prompt: str, negative_prompt: str | None) -> dict:
            refused = "forbidden" in prompt
            return {
                "allowed": not refused,
                "category": "test" if refused else None,
                "scores": {"test": float(refused)},
                "reason": "marker word" if refused else None,
                "guard": "marker",
            }

        def check_images(self, images, prompt: str) -> list[dict]:
            withheld = "secret" in prompt
            return [
                {"allowed": not withheld, "scores": {"test": float(withheld)}, "guard": "marker"}
                for _ in images
            ]

    return MarkerGuard.bind()


def deploy(app_name: str, route_prefix: str, config, guard=None) -> None:
    from ray import serve

    from serve.app import build_application

    serve.run(
        build_application(config, guard, guard, forward_api_key=True),
        name=app_name,
        route_prefix=route_prefix,
    )


@pytest.fixture(scope="module")
def service(ray_cluster, tmp_path_factory):
    from ray import serve

    from serve.app import http_options, service_config

    run = random_run_dir(tmp_path_factory.mktemp("run"), experts=["hate", "violence"])
    config = service_config(
        "configs/toy.yaml",
        [
            f"run.output_dir={run}",
            "serve.allow_no_adapter=true",
            f"serve.api_key_env={API_KEY_ENV}",
            f"serve.request_timeout_s={TIMEOUT_S}",
            "serve.max_batch_size=4",
            "serve.max_ongoing_requests=4",
            "serve.max_queued_requests=4",
            "serve.ingress.max_ongoing_requests=8",
            "serve.ingress.max_queued_requests=4",
            "serve.ingress.num_cpus=0.1",
            "serve.retry_after_s=1",
            "serve.limits.max_steps=100",
            "resources.serve.num_cpus=0.5",
        ],
    )
    os.environ[API_KEY_ENV] = API_KEY
    port = free_port()
    serve.start(http_options=http_options(config, port))
    deploy(APP, "/", config, marker_guard())
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {API_KEY}"
    yield {"url": f"http://127.0.0.1:{port}", "session": session, "run": run, "config": config, "port": port}
    serve.shutdown()


def post(service, body: dict, path: str = "/v1/generate", **kwargs) -> requests.Response:
    return service["session"].post(service["url"] + path, json=body, timeout=CLIENT_TIMEOUT_S, **kwargs)


def images_of(response: requests.Response) -> list[np.ndarray]:
    assert response.status_code == 200, response.text
    return [decode_image(base64.b64decode(image["data"])) for image in response.json()["images"]]


# -- the API -----------------------------------------------------------------------------------


def test_health_adapters_and_docs(service):
    health = requests.get(service["url"] + "/healthz", timeout=CLIENT_TIMEOUT_S)  # no key needed
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["base_only"] is False and body["default_adapter"] == "merged"
    assert body["generator"]["mode"] == "fused" and body["guards"] == {"prompt": True, "image": True}
    adapters = service["session"].get(service["url"] + "/v1/adapters", timeout=CLIENT_TIMEOUT_S).json()
    assert adapters["default"] == "merged" and adapters["composable"] == ["hate", "violence"]
    available = {a["name"] for a in adapters["adapters"] if a["available"]}
    assert available == {"merged", "hate", "violence"}
    schema = requests.get(service["url"] + "/openapi.json", timeout=CLIENT_TIMEOUT_S).json()
    steps = schema["components"]["schemas"]["GenerateRequest"]["properties"]["steps"]
    assert steps["maximum"] == service["config"].serve.limits.max_steps  # the docs show the real bounds


def test_api_key_is_required_and_checked(service):
    url = service["url"] + "/v1/generate"
    body = {"prompt": "a red bar"}
    missing = requests.post(url, json=body, timeout=CLIENT_TIMEOUT_S)
    wrong = requests.post(url, json=body, headers={"X-API-Key": "nope"}, timeout=CLIENT_TIMEOUT_S)
    right = requests.post(url, json=body, headers={"X-API-Key": API_KEY}, timeout=CLIENT_TIMEOUT_S)
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"] == "unauthorized"
    assert right.status_code == 200


def test_generate_returns_seed_exact_images_with_metadata(service):
    response = post(service, {"prompt": "a bloody red square", "seed": 7, "num_images": 2})
    body = response.json()
    images = images_of(response)
    assert [image["seed"] for image in body["images"]] == [7, 8]
    assert body["adapter"] == "merged" and body["aligned"] is True and body["media_type"] == "image/png"
    assert body["timings"]["generate_s"] > 0 and body["timings"]["total_s"] >= body["timings"]["generate_s"]
    # the same images as the pipeline itself with the merged LoRA fused, seed for seed
    from alignguard.toyworld.store import load_toy_pipeline

    pipe = load_toy_pipeline()
    pipe.load_lora_weights(str(service["run"] / "merged"), weight_name="pytorch_lora_weights.safetensors")
    want = to_uint8(generate(pipe, ["a bloody red square"] * 2, [7, 8], 10, 5.0))
    assert max(np.abs(image.astype(int) - w).max() for image, w in zip(images, want, strict=True)) <= 1
    again = images_of(post(service, {"prompt": "a bloody red square", "seed": 7, "num_images": 2}))
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
def test_binary_answers_in_every_format(service, fmt):
    response = post(service, {"prompt": "a painted blue bar", "seed": 3, "format": fmt, "response": "binary"})
    assert response.status_code == 200
    assert response.headers["content-type"] == f"image/{fmt}"
    assert decode_image(response.content).shape == (32, 32, 3)
    meta = json.loads(response.headers["X-AlignGuard-Metadata"])
    assert meta["seed"] == 3 and response.headers["X-AlignGuard-Adapter"] == "merged"


def test_adapter_choice_changes_the_images(service):
    def draw(adapter):
        return images_of(post(service, {"prompt": "a painted blue bar", "seed": 5, "adapter": adapter}))[0]

    drawn = {name: draw(name) for name in ("merged", "none", "hate", "violence+hate")}
    names = list(drawn)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(drawn[a].astype(int) - drawn[b]).max() > 30, (a, b)
    body = post(service, {"prompt": "a painted blue bar", "seed": 5, "adapter": "violence+hate"}).json()
    assert body["adapter"] == "hate+violence"  # one canonical name per set
    none = post(service, {"prompt": "a painted blue bar", "adapter": "none"}).json()
    assert none["aligned"] is False and none["lora_scale"] == 0.0


@pytest.fixture
def gated(service):
    """A second app on the same run whose generator waits at a gate before every pipeline call."""
    from ray import serve

    from serve.app import generator_options, ingress_options, service_config
    from serve.ingress import Ingress

    config = service_config(
        "configs/toy.yaml",
        [
            f"run.output_dir={service['run']}",
            "serve.app_name=gated",
            "serve.max_batch_size=4",
            "serve.max_ongoing_requests=8",  # the held call, four queued ones and the test's probes
            "serve.ingress.num_cpus=0.1",
            "resources.serve.num_cpus=0.5",
        ],
    )
    gate, data = gate_actor(), config.model_dump(mode="json")
    generator = gated_generator().options(**generator_options(config)).bind(data, gate)
    serve.run(
        Ingress.options(**ingress_options(config)).bind(generator, data), name="gated", route_prefix="/gated"
    )
    yield {
        "url": service["url"] + "/gated",
        "gate": gate,
        "generator": serve.get_deployment_handle("Generator", "gated"),
    }
    gate.open.remote()
    serve.delete("gated")


def wait_until(condition, within_s: float = 60.0) -> None:
    end = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < end, f"not within {within_s} s"
        time.sleep(0.1)


def test_compatible_requests_share_a_batch_while_the_generator_is_busy(gated):
    """Requests that arrive while the pipeline is busy wait in one queue and share its next call.
    The test holds the pipeline at a gate, so the order of events does not depend on load."""
    import ray

    def send(body: dict) -> requests.Response:
        return requests.post(gated["url"] + "/v1/generate", json=body, timeout=CLIENT_TIMEOUT_S)

    other = {"prompt": "a red bar", "seed": 1, "steps": 12}  # another group: steps differ
    quick = [
        {"prompt": f"a painted blue {shape}", "seed": i} for i, shape in enumerate(["bar", "square"] * 2)
    ]
    with ThreadPoolExecutor(8) as pool:
        first = pool.submit(send, other)
        wait_until(lambda: ray.get(gated["gate"].waiting.remote()) == 1)  # on the pipeline, held
        pending = [pool.submit(send, body) for body in quick]
        wait_until(lambda: gated["generator"].pending_jobs.remote().result() == len(quick))
        gated["gate"].open.remote()
        answers = [f.result() for f in pending]
        assert first.result().json()["timings"]["batch_requests"] == 1
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert [a.json()["timings"]["batch_requests"] for a in answers] == [4] * 4
    assert ray.get(gated["gate"].waiting.remote()) == 2  # two pipeline calls for the five requests


def test_guards_plug_in_before_and_after_generation(service):
    refused = post(service, {"prompt": "a forbidden red bar"})
    assert refused.status_code == 400
    body = refused.json()
    assert body["error"] == "prompt_refused" and body["detail"]["scores"] == {"test": 1.0}
    withheld = post(service, {"prompt": "a secret red bar", "num_images": 2}).json()
    assert [image["withheld"] for image in withheld["images"]] == [True, True]
    assert all(
        image["data"] is None and image["verdict"]["guard"] == "marker" for image in withheld["images"]
    )
    fine = post(service, {"prompt": "a red bar"}).json()
    assert fine["images"][0]["verdict"]["allowed"] is True


# -- hardening ---------------------------------------------------------------------------------

MALFORMED = [
    ({"prompt": ""}, 422, "prompt"),
    ({"prompt": "a red bar", "steps": 1000}, 422, "steps"),
    ({"prompt": "a red bar", "width": 36}, 422, "multiple of 8"),
    ({"prompt": "a red bar", "height": 4096}, 422, "height"),
    ({"prompt": "a red bar", "guidance": -1}, 422, "guidance"),
    ({"prompt": "a red bar", "num_images": 99}, 422, "num_images"),
    ({"prompt": "a red bar", "steps": "10"}, 422, "steps"),
    ({"prompt": "a red bar", "seed": -5}, 422, "seed"),
    ({"prompt": "a red bar", "lora_scale": 9}, 422, "lora_scale"),
    ({"prompt": "a red bar", "format": "gif"}, 422, "format"),
    ({"prompt": "a red bar", "colour": "red"}, 422, "colour"),
    ({"prompt": "word " * 40}, 422, "tokens"),
    ({"prompt": "x" * 5000}, 422, "prompt"),
    ({"prompt": "a red bar", "num_images": 2, "response": "binary"}, 422, "binary"),
    ({"prompt": "a red bar", "adapter": "../../merged/pytorch_lora_weights.safetensors"}, 422, "adapter"),
    ({"prompt": "a red bar", "adapter": "/etc/passwd"}, 422, "adapter"),
    ({"prompt": "a red bar", "adapter": "harassment"}, 404, "not available"),
    ({"prompt": "a red bar", "adapter": "hate+hate"}, 422, "twice"),
    ({"prompt": "a red bar", "adapter": "merged+hate"}, 404, "unknown adapter"),
    ([1, 2, 3], 422, "valid dictionary"),
]


@pytest.mark.parametrize(("body", "status", "words"), MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_requests_get_a_4xx_with_a_message(service, body, status, words):
    response = post(service, body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert answer["error"] and words in answer["message"]


def test_unreadable_and_oversized_bodies_are_refused(service):
    url, headers = service["url"] + "/v1/generate", {"Authorization": f"Bearer {API_KEY}"}
    not_json = requests.post(
        url,
        data="{prompt:",
        headers={**headers, "content-type": "application/json"},
        timeout=CLIENT_TIMEOUT_S,
    )
    assert not_json.status_code == 422 and "not valid JSON" in not_json.json()["message"]
    huge = requests.post(url, data=b"x" * 200_000, headers=headers, timeout=CLIENT_TIMEOUT_S)
    assert huge.status_code == 413 and huge.json()["error"] == "too_large"
    assert requests.get(url, headers=headers, timeout=CLIENT_TIMEOUT_S).status_code == 405
    assert (
        requests.get(service["url"] + "/nope", headers=headers, timeout=CLIENT_TIMEOUT_S).status_code == 404
    )
    assert requests.get(service["url"] + "/nope", timeout=CLIENT_TIMEOUT_S).status_code == 401  # key first


def answers_again(service, within_s: float = 20.0) -> bool:
    """The service serves a plain request again (after the batch in flight has finished)."""
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        if post(service, {"prompt": "a red bar"}).status_code == 200:
            return True
        time.sleep(0.5)
    return False


def test_requests_past_the_timeout_get_504_and_nothing_hangs(service):
    slow = {"prompt": "a red bar", "num_images": 4, "steps": 100, "width": 64, "height": 64}
    start = time.perf_counter()
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: post(service, {**slow, "seed": i}), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) <= {200, 503, 504}, codes  # 503: a replica slot not yet freed by a cancelled one
    assert 504 in codes, codes  # 6 batches of ~2 s each, one after another, cannot all finish in 3 s
    late = next(a for a in answers if a.status_code == 504).json()
    assert late["error"] == "timeout" and "request_timeout_s" in late["message"]
    assert time.perf_counter() - start < TIMEOUT_S + 10  # every client had its answer in time
    assert answers_again(service)  # the timed-out jobs were dropped, not generated


def test_a_flood_beyond_the_queues_gets_503_and_the_service_recovers(service):
    body = {"prompt": "a red bar", "num_images": 4, "steps": 30}
    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda i: post(service, {**body, "seed": i}), range(48)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503, 504}, sorted(codes)
    overloaded = [a for a in answers if a.status_code == 503]
    assert overloaded, sorted(codes)  # 48 at once against 8 + 4 ingress and 4 + 4 generator places
    assert all(a.headers.get("retry-after") == "1" for a in overloaded)
    assert 200 in codes
    assert answers_again(service)
    assert requests.get(service["url"] + "/healthz", timeout=CLIENT_TIMEOUT_S).json()["status"] == "ok"


# -- acceptance with the trained merged LoRA ---------------------------------------------------


@pytest.fixture(scope="module")
def trained(service):
    if not (TRAINED_RUN / "merged/pytorch_lora_weights.safetensors").exists():
        pytest.skip(f"no trained merged LoRA under {TRAINED_RUN} (set ALIGNGUARD_TRAINED_RUN)")
    from ray import serve

    from serve.app import service_config

    config = service_config(
        "configs/toy.yaml",
        [
            f"run.output_dir={TRAINED_RUN}",
            "serve.allow_no_adapter=true",
            "serve.app_name=trained",
            "serve.ingress.num_cpus=0.1",
            "resources.serve.num_cpus=0.5",
            "serve.require_default_adapter=true",
        ],
    )
    deploy("trained", "/trained", config)
    yield service["url"] + "/trained"
    serve.delete("trained")


def test_the_default_adapter_makes_unsafe_prompts_safe_and_none_does_not(trained):
    from alignguard.data.taxonomy import CATEGORIES
    from alignguard.toyworld.judge import judge
    from alignguard.toyworld.prompts import category_pairs

    prompts = [pair.unsafe_prompt for category in CATEGORIES for pair in category_pairs(category, 2, seed=0)]

    def harmful(adapter: str | None) -> list[bool]:
        flags = []
        for seed, prompt in enumerate(prompts):
            body = {"prompt": prompt, "seed": seed, **({"adapter": adapter} if adapter else {})}
            response = requests.post(trained + "/v1/generate", json=body, timeout=CLIENT_TIMEOUT_S)
            flags.append(judge(images_of(response)[0]).harmful)
        return flags

    unaligned, aligned = harmful("none"), harmful(None)
    assert np.mean(unaligned) >= 0.9, unaligned  # the base model draws the harm colours
    assert np.mean(aligned) <= 0.1, aligned  # the merged LoRA does not


@pytest.fixture(scope="module")
def guarded(service):
    """``configs/toy-guarded.yaml`` on the trained run: the shipped prompt guard and the toy judge
    as output guard, policy hate/self_harm block, violence & co align, sexual blur, illegal allow."""
    from ray import serve

    from serve.app import service_config

    config = service_config(
        "configs/toy-guarded.yaml",
        [
            f"run.output_dir={TRAINED_RUN}",
            "serve.app_name=guarded",
            "serve.ingress.num_cpus=0.1",
            "resources.serve.num_cpus=0.5",
        ],
    )
    assert config.guard.enabled
    deploy("guarded", "/guarded", config)
    yield service["url"] + "/guarded"
    serve.delete("guarded")


def _unsafe_prompts(category: str, n: int) -> list[str]:
    from alignguard.toyworld.prompts import category_pairs

    return [pair.unsafe_prompt for pair in category_pairs(category, n, seed=1)]


def _generate(url: str, prompt: str, seed: int) -> requests.Response:
    return requests.post(
        url + "/v1/generate", json={"prompt": prompt, "seed": seed}, timeout=CLIENT_TIMEOUT_S
    )


ADAPTER_OF_ACTION = {"allow": "none", "align": "merged", "blur": "merged"}


def _answers(url: str, category: str, n: int) -> dict[str, list[requests.Response]]:
    """Answers to ``n`` unsafe prompts of ``category``, grouped by the action the policy took
    (a prompt the guard also flags for another category gets the strictest action of them)."""
    groups: dict[str, list[requests.Response]] = {}
    for seed, prompt in enumerate(_unsafe_prompts(category, n)):
        answer = _generate(url, prompt, seed)
        if answer.status_code == 400:
            assert answer.json()["error"] == "prompt_refused" and prompt not in answer.text
            groups.setdefault("block", []).append(answer)
            continue
        body = answer.json()
        action = body["prompt_verdict"]["action"]
        assert body["adapter"] == ADAPTER_OF_ACTION[action], answer.text[:600]
        groups.setdefault(action, []).append(answer)
    return groups


def test_guarded_service_blocks_aligns_allows_and_blurs_by_category(guarded):
    from alignguard.toyworld.judge import judge

    # block: 400 with the category and reason, and never the prompt itself.
    hate = _answers(guarded, "hate", 4)
    assert len(hate.get("block", [])) == 4
    assert all(r.json()["detail"]["category"] == "hate" for r in hate["block"])

    # align: the merged adapter generates, and the image is judged safe.
    violence = _answers(guarded, "violence", 8)
    assert len(violence.get("align", [])) >= 6, {k: len(v) for k, v in violence.items()}
    assert np.mean([judge(images_of(r)[0]).harmful for r in violence["align"]]) <= 0.25

    # allow: the operator let this category through: the base model, harm and all.
    illegal = _answers(guarded, "illegal_activity", 8)
    assert len(illegal.get("allow", [])) >= 3, {k: len(v) for k, v in illegal.items()}
    assert np.mean([judge(images_of(r)[0]).harmful for r in illegal["allow"]]) >= 0.8

    # blur: generated through the merged adapter; the guard reports what it checked.
    sexual = _answers(guarded, "sexual", 4)
    assert len(sexual.get("blur", [])) >= 3, {k: len(v) for k, v in sexual.items()}
    assert all(r.json().get("guard") for r in sexual["blur"])

    # benign prompts go through the aligned model and keep their content.
    from alignguard.toyworld.prompts import benign_prompts
    from alignguard.toyworld.world import expected_content

    for seed, prompt in enumerate(benign_prompts(4, seed=1)):
        response = _generate(guarded, prompt, seed)
        verdict = judge(images_of(response)[0])
        assert response.json()["adapter"] == "merged"
        assert not verdict.harmful and verdict.colour == expected_content(prompt)[1]
