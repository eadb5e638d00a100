from __future__ import annotations

import os
from pathlib import Path

import pydantic
import pytest

from alignguard.config import (
    ConfigError,
    config_from_dict,
    config_hash,
    config_to_yaml,
    load_config,
    parse_override,
)
from alignguard.config.schema import ExperimentConfig

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_configs_exist_for_every_target():
    names = {path.name for path in CONFIGS}
    assert {"toy.yaml", "toy-smoke.yaml", "sd15.yaml", "sdxl.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_under_configs_loads(path):
    config = load_config(path)
    assert isinstance(config, ExperimentConfig)
    # The printed YAML is itself a valid config that resolves to the same thing.
    import yaml

    assert config_from_dict(yaml.safe_load(config_to_yaml(config))) == config


def test_extends_inherits_and_overrides(repo):
    smoke = load_config(repo / "configs/toy-smoke.yaml")
    toy = load_config(repo / "configs/toy.yaml")
    assert smoke.training.steps < toy.training.steps
    assert smoke.training.lora == toy.training.lora  # inherited untouched
    sdxl = load_config(repo / "configs/sdxl.yaml")
    assert sdxl.model.family == "sdxl" and sdxl.training.optimizer == "adafactor"
    assert sdxl.training.beta == load_config(repo / "configs/sd15.yaml").training.beta


def test_override_sets_a_nested_key(repo):
    config = load_config(repo / "configs/sd15.yaml", ["training.lora.rank=8", "run.output_dir=/tmp/x"])
    assert config.training.lora.rank == 8
    assert config.run.output_dir == "/tmp/x"
    assert load_config(repo / "configs/sd15.yaml").training.lora.rank == 4


def test_local_paths_are_resolved_where_the_config_is_loaded(repo, tmp_path, monkeypatch):
    # Ray workers do not share the driver's working directory (Ray Train's chdir to their run's
    # artifacts dir), so a relative path must leave the driver already resolved.
    (tmp_path / "weights").mkdir()
    (tmp_path / "toyworld").mkdir()  # does not shadow the shipped model's name
    monkeypatch.chdir(tmp_path)
    config = load_config(repo / "configs/toy.yaml", ["data.source=csv", "data.path=pairs.csv"])
    assert config.run.output_dir == str(tmp_path / "runs/toy")  # the YAML's runs/toy
    assert config.model.path == "toyworld"  # the shipped model's name, not a path
    assert config.data.path == "pairs.csv"  # not here: left as given, for its own clear error
    assert load_config(repo / "configs/sd15.yaml", ["model.path=weights"]).model.path == str(
        tmp_path / "weights"
    )
    hub = load_config(repo / "configs/sd15.yaml", ["run.output_dir=s3://bucket/run"])
    assert hub.model.path == "stable-diffusion-v1-5/stable-diffusion-v1-5"  # a hub id stays one
    assert hub.run.output_dir == "s3://bucket/run"
    home = load_config(repo / "configs/toy.yaml", ["run.output_dir=~/r"])
    assert home.run.output_dir == os.path.expanduser("~/r")


def test_override_parses_yaml_values(repo):
    config = load_config(
        repo / "configs/toy.yaml",
        ["data.categories=[hate, sexual]", "merge.rank=null", "training.beta=2.5e3", "model.scheduler=ddim"],
    )
    assert config.data.categories == ("hate", "sexual")
    assert config.merge.rank is None
    assert config.training.beta == 2500.0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("training.lora.rank=-1", "training.lora.rank"),
        ("training.lora.rank=four", "training.lora.rank"),
        ("training.caption_dropout=1.5", "training.caption_dropout"),
        ("model.family=sd3", "model.family"),
        ("model.resolution=500", "model.resolution"),
        ("training.lora.rnak=4", "training.lora.rnak"),
        ("data.categories=[hate, nudity]", "data.categories"),
        ("serve.autoscaling.min_replicas=9", "serve.autoscaling"),
        ("bogus.key=1", "bogus"),
    ],
)
def test_invalid_values_name_the_key(repo, override, key):
    with pytest.raises(ConfigError) as info:
        load_config(repo / "configs/sd15.yaml", [override])
    assert key in str(info.value)


def test_override_through_a_value_is_an_error(repo):
    with pytest.raises(ConfigError, match=r"run\.seed is a value"):
        load_config(repo / "configs/toy.yaml", ["run.seed.x=1"])


@pytest.mark.parametrize("text", ["training.lora.rank", "=3", "a..b=1"])
def test_malformed_overrides_are_rejected(text):
    with pytest.raises(ConfigError, match=r"key\.sub=value"):
        parse_override(text)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)
    loop = tmp_path / "loop.yaml"
    loop.write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="deeper"):
        load_config(loop)


def test_csv_source_requires_a_path():
    with pytest.raises(ConfigError, match=r"data\.path is required"):
        config_from_dict({"data": {"source": "csv"}})


def test_configs_are_frozen_and_hash_stably(repo):
    config = load_config(repo / "configs/toy.yaml")
    with pytest.raises(pydantic.ValidationError):
        config.training.lora.rank = 99
    assert config_hash(config) == config_hash(load_config(repo / "configs/toy.yaml"))
    assert config_hash(config) != config_hash(load_config(repo / "configs/toy.yaml", ["run.seed=1"]))


def _sections(annotation) -> list[type[pydantic.BaseModel]]:
    """The config sections a field holds: itself, inside a tuple, or optional."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _sections(arg)]


def test_every_config_field_has_help_text():
    # The schema is the reference documentation: `alignguard config --explain KEY` prints these.
    missing, seen, todo = [], set(), [("", ExperimentConfig)]
    while todo:
        prefix, model = todo.pop()
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            if not (field.description or "").strip():
                missing.append(key)
            for section in _sections(field.annotation):
                if (key, section) not in seen:
                    seen.add((key, section))
                    todo.append((key + ".", section))
    assert not missing, f"config fields without a description: {sorted(missing)}"
    assert len(seen) >= 30  # every section was walked (nested ones included)


def test_config_without_a_file_is_the_defaults_plus_overrides():
    config = load_config(None, ["guard.policy.hate.action=block"])
    assert config.guard.policy.hate.action == "block"
    assert config.model_copy(update={"guard": ExperimentConfig().guard}) == ExperimentConfig()
    with pytest.raises(ConfigError, match=r"run\.seed: Input should be a valid integer"):
        load_config(None, ["run.seed.x=1"])
    with pytest.raises(ConfigError, match=r"guard\.policy\.hate\.action"):
        load_config(None, ["guard.policy.hate.action=maybe"])
