"""Experiment configuration: typed frozen sections loaded from YAML with overrides."""

from alignguard.config.loader import (
    ConfigError,
    config_from_dict,
    config_hash,
    config_to_yaml,
    load_config,
    parse_override,
)
from alignguard.config.schema import ExperimentConfig

__all__ = [
    "ConfigError",
    "ExperimentConfig",
    "config_from_dict",
    "config_hash",
    "config_to_yaml",
    "load_config",
    "parse_override",
]
