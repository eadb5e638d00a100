"""Model families as plug-ins: the registry, each built-in provider, and a new family reaching every
caller through its provider alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

from alignguard.config.loader import ConfigError, load_config
from alignguard.config.schema import GuardSection, LoraSection, ModelSection, PromptSetSpec
from alignguard.families import ModelFamily, get_family, known_families, load_pipeline, register_family
from alignguard.families.base import CSV_PROMPT_FORMATS
from alignguard.models import tiny_sd_pipeline, tiny_sdxl_pipeline
from alignguard.registry import MODEL_FAMILIES, Registry, UnknownPluginError
from alignguard.toyworld.paths import MODEL_DIR


@dataclasses.dataclass(frozen=True)
class FlowFamily(ModelFamily):
    """A stand-in for a flow-matching transformer family (SD3, Flux): only what callers read."""

    def pipeline_class(self) -> type[DiffusionPipeline]:
        return StableDiffusionPipeline


@pytest.fixture
def flow_family(monkeypatch):
    """``model.family: flow`` registered for one test (the registry is process-wide)."""
    monkeypatch.setattr(MODEL_FAMILIES, "_entries", dict(MODEL_FAMILIES._entries))
    family = FlowFamily(name="flow", prediction_type="flow", default_resolution=1024, output_guard="none")
    register_family(family)
    return family


def test_registry_imports_a_plugin_named_by_path_on_first_use():
    registry: Registry = Registry("widget")
    registry.register("joiner", "os.path:join")
    registry.register("seven", 7)
    assert registry.names() == ("joiner", "seven") and "seven" in registry
    import os.path

    assert registry.get("joiner") is os.path.join and registry.get("seven") == 7
    with pytest.raises(ValueError, match="already registered"):
        registry.register("seven", 8)
    registry.register("seven", 8, replace=True)
    assert registry.get("seven") == 8
    with pytest.raises(UnknownPluginError, match=r"unknown widget 'eight' \(known: joiner, seven\)"):
        registry.get("eight")


def test_the_built_in_families():
    assert known_families() == ("sd15", "sd21", "sdxl", "toy")
    for name in known_families():
        assert get_family(name).name == name
    sd15, sd21, sdxl, toy = (get_family(n) for n in ("sd15", "sd21", "sdxl", "toy"))
    assert sd15.pipeline_class() is sd21.pipeline_class() is toy.pipeline_class() is StableDiffusionPipeline
    assert sdxl.pipeline_class() is StableDiffusionXLPipeline
    assert (sd15.prediction_type, sd21.prediction_type) == ("epsilon", "v_prediction")
    assert [f.default_resolution for f in (toy, sd15, sd21, sdxl)] == [32, 512, 768, 1024]
    # What only the toy world has: an exact judge and ground-truth scenes.
    assert [f.output_guard for f in (toy, sd15, sdxl)] == ["toy_judge", "nudenet", "nudenet"]
    assert [f.calibration_source for f in (toy, sd15, sdxl)] == ["toyworld", None, None]
    assert toy.judges_training and toy.report_suite
    assert not any(f.judges_training or f.report_suite for f in (sd15, sd21, sdxl))
    assert toy.default_prompt_sets() == (PromptSetSpec(name="toyworld", format="toyworld"),)
    assert sd15.default_prompt_sets() == sdxl.default_prompt_sets() == ()
    assert sd21.prompt_formats == CSV_PROMPT_FORMATS and "toyworld" in toy.prompt_formats
    assert all(get_family(n).lora_target_modules == LoraSection().target_modules for n in known_families())


def test_unknown_family_names_the_key_and_the_known_ones(repo):
    with pytest.raises(
        ConfigError, match=r"model\.family: .*unknown model family 'sd3' \(known: sd15, sd21, sdxl, toy\)"
    ):
        load_config(repo / "configs/sd15.yaml", ["model.family=sd3"])
    with pytest.raises(KeyError, match="known: sd15, sd21, sdxl, toy"):
        get_family("sd3")


def test_configs_name_their_family_and_its_resolution(repo):
    for name in ("toy", "sd15", "sd21", "sdxl"):
        model = load_config(repo / f"configs/{name}.yaml").model
        assert model.family == name and model.resolution == get_family(name).default_resolution


@pytest.mark.parametrize(
    ("family", "builder"),
    [("sd15", tiny_sd_pipeline), ("sd21", tiny_sd_pipeline), ("sdxl", tiny_sdxl_pipeline)],
)
def test_each_family_loads_its_pipeline_class(tmp_path, family, builder):
    builder(seed=0).save_pretrained(tmp_path)
    pipe = load_pipeline(ModelSection(family=family, path=str(tmp_path), device="cpu"))
    assert type(pipe) is get_family(family).pipeline_class()
    assert getattr(pipe, "safety_checker", None) is None


def test_the_toy_family_names_the_shipped_model_and_loads_other_directories(tmp_path):
    toy = get_family("toy")
    assert toy.resolve_path("toyworld") == str(MODEL_DIR)
    assert get_family("sd15").resolve_path("toyworld") == "toyworld"  # only the toy family ships it
    original = tiny_sd_pipeline(seed=1)
    original.save_pretrained(tmp_path)
    pipe = load_pipeline(ModelSection(family="toy", path=str(tmp_path), device="cpu", dtype="float32"))
    assert isinstance(pipe, StableDiffusionPipeline)
    for loaded, saved in zip(pipe.unet.parameters(), original.unet.parameters(), strict=True):
        assert torch.equal(loaded, saved)


def test_a_new_family_reaches_every_caller_through_its_provider(repo, flow_family):
    """No caller compares names: registering a family is all it takes for the config, the guard,
    the evaluation prompt sets and the calibration source to follow it."""
    from alignguard.evaluation.prompts import default_specs, unsupported_format
    from alignguard.guards.runtime import build_output_guard, output_guard_kind

    config = load_config(repo / "configs/sd15.yaml", ["model.family=flow"])
    assert config.model.family == "flow" and get_family("flow") is flow_family
    assert output_guard_kind(GuardSection(), "flow") == "none"
    assert build_output_guard(GuardSection(), "flow") is None
    assert default_specs("flow") == ()
    toy_suite = PromptSetSpec(name="suite", format="toyworld")
    assert (
        unsupported_format(toy_suite, "flow")
        == "prompt set 'suite': format 'toyworld' needs model.family 'toy'"
    )
    assert unsupported_format(toy_suite, "toy") is None
    assert (
        unsupported_format(PromptSetSpec(name="i2p", format="prompts", path="x.csv", kind="unsafe"), "flow")
        is None
    )


def test_calibration_auto_follows_the_family(repo, tmp_path, flow_family):
    from alignguard.io import RunDir
    from alignguard.merge.providers import CalibrationUnavailable, select_provider

    toy = load_config(repo / "configs/toy.yaml", [f"run.output_dir={tmp_path}"])
    assert select_provider(toy, RunDir(str(tmp_path)))[0] == "toyworld"
    flow = load_config(repo / "configs/toy.yaml", [f"run.output_dir={tmp_path}", "model.family=flow"])
    with pytest.raises(CalibrationUnavailable, match=r"model\.family='flow'"):
        select_provider(flow, RunDir(str(tmp_path)))
    registered = dataclasses.replace(flow_family, calibration_source="toyworld")
    register_family(registered, replace=True)
    assert select_provider(flow, RunDir(str(tmp_path)))[0] == "toyworld"
