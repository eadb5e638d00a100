"""The serving layer without a cluster: config bounds, adapter catalog, engine, request model,
encoding, the Serve config file. (Over real HTTP on Ray Serve: ``test_serve_http.py``.)"""

from __future__ import annotations

import shutil
import time

import numpy as np
import pydantic
import pytest
import torch
import yaml
from serve_support import random_run_dir

from alignguard.config import ConfigError, load_config
from alignguard.generation import generate
from alignguard.imaging import to_uint8
from alignguard.toyworld.store import load_toy_pipeline
from serve.adapters import AdapterCatalog, AdapterError, AdapterPlan
from serve.encoding import decode_image, encode_image
from serve.engine import Engine, GenerationFailed, Job, adapter_weights
from serve.schemas import GenerateRequest, RequestBounds

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return random_run_dir(tmp_path_factory.mktemp("run"), experts=["hate", "violence", "sexual"])


def toy_serve(run, *overrides):
    return load_config("configs/toy.yaml", [f"run.output_dir={run}", *overrides]).serve


def reference(run, adapters: dict[str, float], prompts, seeds) -> np.ndarray:
    """What a freshly loaded pipeline with these LoRAs (unfused) draws."""
    pipe = load_toy_pipeline()
    for name in adapters:
        stage = run / ("merged" if name == "merged" else f"experts/{name}")
        pipe.load_lora_weights(str(stage), weight_name="pytorch_lora_weights.safetensors", adapter_name=name)
    if adapters:
        pipe.set_adapters(list(adapters), list(adapters.values()))
    return to_uint8(generate(pipe, prompts, seeds, 10, 5.0))


# -- config ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("serve.limits.max_images=32", "serve"),  # > max_batch_size 16
        ("serve.max_ongoing_requests=4", "serve"),  # < max_batch_size: batches could never fill
        ("serve.limits.min_size=20", "serve.limits"),  # not a multiple of 8
        ("serve.limits.lora_scale_min=0", "serve"),  # scale 0 would switch the safety LoRA off
        ("serve.api_key_env=not-a-name", "serve.api_key_env"),
        ("serve.default_adapter=../x", "serve.default_adapter"),
        ("serve.default_adapter=none", "serve"),  # needs allow_no_adapter
        ("serve.limits.max_stepz=3", "serve.limits.max_stepz"),
    ],
)
def test_invalid_serve_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("configs/toy.yaml", [override])


def test_every_shipped_config_has_consistent_serve_bounds():
    from serve.app import service_config

    for name in ("toy", "toy-smoke", "sd15", "sd21", "sdxl"):
        config = service_config(f"configs/{name}.yaml")
        assert config.serve.limits.min_size <= config.model.resolution <= config.serve.limits.max_size


# -- the adapter catalog -----------------------------------------------------------------------


def test_catalog_resolves_only_names_that_exist(run_dir):
    catalog = AdapterCatalog.discover(str(run_dir), toy_serve(run_dir))
    assert not catalog.base_only and catalog.resolve(None).merged
    assert catalog.resolve("violence+hate").experts == ("hate", "violence")  # canonical order
    assert catalog.resolve("hate+violence").name == "hate+violence"
    cases = {
        "harassment": 404,  # a category, but no expert trained
        "bogus": 404,
        "../../etc/passwd": 422,
        "/tmp/x.safetensors": 422,
        "Merged": 422,
        "hate+hate": 422,
        "hate+violence+sexual+merged": 404,  # 'merged' is not an expert
        "none": 403,  # the operator did not allow it
        "x" * 300: 422,
    }
    for name, status in cases.items():
        with pytest.raises(AdapterError) as caught:
            catalog.resolve(name)
        assert caught.value.status == status, name
    tight = AdapterCatalog.discover(str(run_dir), toy_serve(run_dir, "serve.limits.max_composed_adapters=2"))
    with pytest.raises(AdapterError, match="at most 2"):
        tight.resolve("hate+violence+sexual")
    allowed = AdapterCatalog.discover(str(run_dir), toy_serve(run_dir, "serve.allow_no_adapter=true"))
    assert allowed.resolve("none").is_none


def test_base_only_mode_until_the_merged_lora_exists(tmp_path, run_dir):
    shutil.copytree(run_dir / "experts", tmp_path / "experts")
    catalog = AdapterCatalog.discover(str(tmp_path), toy_serve(tmp_path))
    assert catalog.base_only and catalog.default.is_none
    assert "merged/pytorch_lora_weights.safetensors does not exist" in catalog.describe()["base_only_reason"]
    with pytest.raises(AdapterError) as caught:
        catalog.resolve("merged")
    assert caught.value.status == 404
    assert catalog.resolve("hate").experts == ("hate",)  # experts still work
    with pytest.raises(AdapterError, match="require_default_adapter"):
        AdapterCatalog.discover(str(tmp_path), toy_serve(tmp_path, "serve.require_default_adapter=true"))


def test_an_adapter_whose_manifest_does_not_match_is_refused(tmp_path, run_dir):
    shutil.copytree(run_dir, tmp_path, dirs_exist_ok=True)
    weights = tmp_path / "experts/hate/pytorch_lora_weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    weights.write_bytes(bytes(data))
    catalog = AdapterCatalog.discover(str(tmp_path), toy_serve(tmp_path))
    assert catalog.experts["hate"].state == "invalid" and "sha256" in catalog.experts["hate"].reason
    with pytest.raises(AdapterError):
        catalog.resolve("hate")


def test_adapter_weights_compensate_the_fused_merged_lora():
    merged = AdapterPlan("merged", merged=True)
    none = AdapterPlan("none")
    experts = AdapterPlan("h+v", experts=("h", "v"))
    assert adapter_weights(merged, 1.0, fused=True) == {}
    assert adapter_weights(merged, 0.5, fused=True) == {"merged": -0.5}
    assert adapter_weights(none, 1.0, fused=True) == {"merged": -1.0}
    assert adapter_weights(experts, 0.8, fused=True) == {"merged": -1.0, "h": 0.8, "v": 0.8}
    assert adapter_weights(merged, 0.5, fused=False) == {"merged": 0.5}
    assert adapter_weights(none, 1.0, fused=False) == {}
    assert adapter_weights(experts, 1.0, fused=False) == {"h": 1.0, "v": 1.0}


# -- the engine --------------------------------------------------------------------------------


def test_engine_matches_separately_loaded_pipelines_for_every_adapter(run_dir):
    catalog = AdapterCatalog.discover(str(run_dir), toy_serve(run_dir, "serve.allow_no_adapter=true"))
    engine = Engine(load_toy_pipeline(), catalog, fuse_default=True, max_loaded=2)
    prompt, seed = "a bloody red square", 11
    jobs = [
        Job(prompt, seed, 2, adapter="merged"),
        Job(prompt, seed, 1, adapter="hate"),
        Job(prompt, seed, 1, adapter="none"),
        Job(prompt, seed, 1, adapter="hate+violence"),
        Job(prompt, seed, 1, adapter="merged", lora_scale=0.5),
        Job(prompt, seed, 1, adapter="sexual"),  # with max_loaded=2 this evicts an expert
    ]
    results = engine.run(jobs)
    expected = [
        reference(run_dir, {"merged": 1.0}, [prompt] * 2, [seed, seed + 1]),
        reference(run_dir, {"hate": 1.0}, [prompt], [seed]),
        reference(run_dir, {}, [prompt], [seed]),
        reference(run_dir, {"hate": 1.0, "violence": 1.0}, [prompt], [seed]),
        reference(run_dir, {"merged": 0.5}, [prompt], [seed]),
        reference(run_dir, {"sexual": 1.0}, [prompt], [seed]),
    ]
    for job, result, want in zip(jobs, results, expected, strict=True):
        assert result.images.shape == want.shape and result.images.dtype == np.uint8
        assert np.abs(result.images.astype(int) - want).max() <= 1, job.adapter
    assert len(engine.resident) <= 3  # 2 experts + merged's compensator
    # adapter choice changes the pictures (random LoRAs are far from no-ops)
    assert np.abs(results[1].images.astype(int) - results[2].images).max() > 50
    # back to the default: the fused path again, bit for bit
    again = engine.run([Job(prompt, seed, 2, adapter="merged")])[0]
    assert np.array_equal(again.images, results[0].images)


def test_idle_adapters_are_unloaded_and_the_default_path_is_plain_fused_again(run_dir):
    catalog = AdapterCatalog.discover(str(run_dir), toy_serve(run_dir))
    engine = Engine(load_toy_pipeline(), catalog, idle_s=30.0)
    before = engine.run([Job("a red bar", 3)])[0].images
    engine.run([Job("a red bar", 3, adapter="hate")])
    assert set(engine.resident) == {"merged", "hate"}
    engine.unload_idle(now=time.monotonic() + 10)  # not idle long enough
    assert engine.resident
    engine.unload_idle(now=time.monotonic() + 31)
    assert not engine.resident
    assert not any("lora" in name for name, _ in engine.pipe.unet.named_modules())
    assert np.array_equal(engine.run([Job("a red bar", 3)])[0].images, before)
    assert engine.run([Job("a red bar", 3, adapter="hate")])[0].images.shape == (1, 32, 32, 3)  # reloads


def test_engine_batches_compatible_jobs_and_stays_seed_exact(run_dir):
    catalog = AdapterCatalog.discover(str(run_dir), toy_serve(run_dir))
    engine = Engine(load_toy_pipeline(), catalog)
    alone = engine.run([Job("a painted blue bar", 5, 1)])[0]
    crowd = engine.run(
        [Job("a bloody red square", 1, 2), Job("a painted blue bar", 5, 1), Job("a red bar", 2, 1, steps=12)]
    )
    assert crowd[1].batch_requests == 2 and crowd[1].batch_images == 3  # steps=12 is another group
    assert crowd[2].batch_requests == 1
    assert np.abs(crowd[1].images.astype(int) - alone.images).max() <= 1


def test_a_failing_group_fails_only_its_own_jobs(tmp_path, run_dir):
    shutil.copytree(run_dir, tmp_path, dirs_exist_ok=True)
    catalog = AdapterCatalog.discover(str(tmp_path), toy_serve(tmp_path))
    engine = Engine(load_toy_pipeline(), catalog)
    (tmp_path / "experts/hate/pytorch_lora_weights.safetensors").unlink()  # vanished after start-up
    good, bad = engine.run([Job("a red bar", 1), Job("a red bar", 1, adapter="hate")])
    assert good.images.shape == (1, 32, 32, 3)
    assert isinstance(bad, (GenerationFailed, OSError, AdapterError))


# -- the request model, encoding ---------------------------------------------------------------


def test_request_model_enforces_the_configured_bounds():
    config = load_config("configs/toy.yaml")
    limits = config.serve.limits
    Request = GenerateRequest.for_service(RequestBounds.from_config(config))
    ok = Request(prompt="a red bar")
    assert (ok.width, ok.height, ok.steps, ok.guidance, ok.num_images) == (32, 32, 10, 5.0, 1)
    bad = [
        {"prompt": ""},
        {"prompt": "   "},
        {"prompt": "x" * (limits.max_prompt_chars + 1)},
        {"prompt": "x", "width": 36},
        {"prompt": "x", "height": limits.max_size + 8},
        {"prompt": "x", "steps": 0},
        {"prompt": "x", "steps": "10"},
        {"prompt": "x", "guidance": float("nan")},
        {"prompt": "x", "num_images": limits.max_images + 1},
        {"prompt": "x", "lora_scale": 5.0},
        {"prompt": "x", "seed": -1},
        {"prompt": "x", "format": "gif"},
        {"prompt": "x", "stepz": 3},
    ]
    for body in bad:
        with pytest.raises(pydantic.ValidationError):
            Request(**body)


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_images_round_trip_through_every_format(fmt):
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = (200, 30, 30)
    back = decode_image(encode_image(image, fmt, quality=95))
    assert back.shape == image.shape
    error = np.abs(back.astype(int) - image)
    if fmt == "png":
        assert error.max() == 0
    else:  # lossy: edges blur (chroma subsampling), the inside of the square keeps its colour
        assert error[12:20, 12:20].max() <= 12 and error.mean() < 6


# -- the Serve config file ---------------------------------------------------------------------


def test_serve_config_yaml_passes_rays_schema_and_ours(repo):
    from ray.serve.schema import ServeDeploySchema

    from serve.validate import check_serve_config

    raw = yaml.safe_load((repo / "serve/config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(raw)
    assert schema.applications[0].import_path == "serve.app:build_app"
    assert check_serve_config(repo / "serve/config.yaml") == []


def test_keys_ray_would_ignore_are_reported(repo, tmp_path):
    from serve.validate import check_serve_config

    raw = yaml.safe_load((repo / "serve/config.yaml").read_text())
    raw["http_options"]["request_timeout"] = 3  # typo of request_timeout_s
    raw["applications"][0]["deployments"] = [{"name": "Generator", "max_ongoing_request": 4}]
    raw["applications"][0]["args"]["overrides"] = ["serve.max_batch_sise=4"]
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    problems = "\n".join(check_serve_config(path))
    assert "http_options.request_timeout'" in problems
    assert "deployments[0].max_ongoing_request" in problems
    assert "serve.max_batch_sise" in problems


def test_the_app_builder_accepts_the_yaml_args_and_refuses_unknown_ones(repo):
    from ray.serve import Application

    from serve.app import build_app

    args = yaml.safe_load((repo / "serve/config.yaml").read_text())["applications"][0]["args"]
    assert isinstance(build_app(args), Application)
    with pytest.raises(pydantic.ValidationError):
        build_app({**args, "overides": []})


def test_cli_checks_serve_configs_and_refuses_rays_worker_ports(repo, tmp_path, capsys):
    from jobs.cli import main

    assert main(["serve", "--check", str(repo / "serve/config.yaml")]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications: [{name: x, import_path: serve.app:build_app, args: {confg: a}}]\n")
    assert main(["serve", "--check", str(bad)]) == 2
    assert "confg" in capsys.readouterr().err
    assert main(["serve", "--config", "configs/toy.yaml", "--port", "12345"]) == 2
    assert "worker port range" in capsys.readouterr().err
    # what would crash-loop replicas fails before Ray starts
    empty = f"run.output_dir={tmp_path / 'empty'}"
    assert main(["serve", "--config", "configs/toy.yaml", empty, "serve.require_default_adapter=true"]) == 2
    assert "merged/pytorch_lora_weights.safetensors does not exist" in capsys.readouterr().err
    assert main(["serve", "--config", "configs/toy.yaml", "serve.api_key_env=AG_TEST_UNSET_KEY_VAR"]) == 2
    assert "$AG_TEST_UNSET_KEY_VAR is not set" in capsys.readouterr().err


def test_launch_checks_resolve_the_port_and_refuse_a_detached_private_instance(tmp_path, capsys):
    from serve.app import service_config
    from serve.lifecycle import check_launch

    config = service_config("configs/toy.yaml", [f"run.output_dir={tmp_path / 'no-run-yet'}"])
    assert check_launch(config, None, None, detach=False) == config.serve.port
    assert "BASE-ONLY mode" in capsys.readouterr().err
    assert check_launch(config, 8123, "auto", detach=True) == 8123
    with pytest.raises(ConfigError, match="--detach needs a running cluster"):
        check_launch(config, 8123, "local", detach=True)
