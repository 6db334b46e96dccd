"""Experiment configuration as data: dataclasses, YAML presets and ``--set`` overrides.

A run is fully described by one ``Config`` (data, model, loss, train). Presets in
``auformer/presets/*.yaml`` only list what differs from the dataclass defaults, and
every value is checked against its field's type and range (the table ``FIELD_RULES``) when
a section is built, so a typo or an out-of-range value fails before any data is read, naming
the field, the bad value and what is valid (for an unknown key: the closest valid one).

Modules: `sections` (the dataclasses), `rules` (`FIELD_RULES` and the type checks), `presets`
(presets, overrides and cross-field checks). Import the names from ``auformer.config``.
"""

from __future__ import annotations

from auformer.config.presets import apply_values, load_config, parse_overrides, preset_names, save_config, validate
from auformer.config.rules import FIELD_RULES, Rule, timm_kwargs_problem, value_problem
from auformer.config.sections import (
    DEFAULT_PRESET,
    Config,
    DataConfig,
    LossConfig,
    ModelConfig,
    TrainConfig,
    field_spec,
)

__all__ = [
    "DEFAULT_PRESET",
    "FIELD_RULES",
    "Config",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "Rule",
    "TrainConfig",
    "apply_values",
    "field_spec",
    "load_config",
    "parse_overrides",
    "preset_names",
    "save_config",
    "timm_kwargs_problem",
    "validate",
    "value_problem",
]
