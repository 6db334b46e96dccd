"""Building a validated `Config`: presets (package names or YAML files), ``--set`` overrides, ``--data``,
the cross-field checks (`validate`), and writing a run's config.yaml back (`save_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from auformer.config.rules import show
from auformer.config.sections import DEFAULT_PRESET, Config, section_fields, unknown_key
from auformer.errors import AUFormerError, one_line

_PRESETS = resources.files("auformer") / "presets"
MAX_YAML_BYTES = 64 * 1024  # a preset or config.yaml is ~2 kB; PyYAML takes seconds per 64 kB of a huge list
MAX_OVERRIDE_CHARS = 4096  # one --set item


def preset_names() -> list[str]:
    """Names of the presets shipped in the package (``synthetic``, ``bp4d``, ...)."""
    return sorted(p.name.removesuffix(".yaml") for p in _PRESETS.iterdir() if p.name.endswith(".yaml"))


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` (a ``!!python/object`` tag is refused, never built); any failure is one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise AUFormerError(f"{where}: not valid YAML for auformer ({one_line(error)})") from None
    except RecursionError:
        raise AUFormerError(f"{where}: YAML nested too deeply") from None


def _read_preset(preset: str) -> dict[str, Any]:
    """Read a preset by package name or YAML path (at most ``MAX_YAML_BYTES``) into a plain dict."""
    if preset.endswith((".yaml", ".yml")):
        path = Path(preset)
        if not path.is_file():
            raise FileNotFoundError(f"preset file {path} does not exist")
        with open(path, "rb") as file:
            raw = file.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise AUFormerError(f"preset {path}: larger than {MAX_YAML_BYTES // 1024} kB; a config is a few kB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise AUFormerError(f"preset {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    else:
        if preset not in preset_names():
            close = difflib.get_close_matches(preset, preset_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AUFormerError(f"unknown preset {preset!r}{hint}; choose from {', '.join(preset_names())} or a .yaml path")
        text = _PRESETS.joinpath(f"{preset}.yaml").read_text()
    data = _parse_yaml(text, f"preset {preset}") or {}
    if not isinstance(data, dict):
        raise AUFormerError(f"preset {preset}: expected a mapping of sections (data, model, loss, train)")
    return data


def apply_values(values: dict[str, dict[str, Any]], config: Config) -> Config:
    """Return a copy of ``config`` with ``{section: {key: value}}`` applied (each section checks itself)."""
    sections = {}
    for section, updates in values.items():
        hints = section_fields(section)
        if not isinstance(updates, dict):
            raise AUFormerError(f"config section {section!r} must be a mapping, got {show(updates)}")
        for key in updates:
            if key not in hints:
                raise unknown_key(key, list(hints), f"{section}.")
        sections[section] = dataclasses.replace(getattr(config, section), **updates)
    return dataclasses.replace(config, **sections)


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``["train.lr=3e-4", "data.aus=[1, 2]"]`` into ``{section: {key: value}}``.

    Values are YAML scalars/lists (``yaml.safe_load``, never ``eval``), each item at most
    ``MAX_OVERRIDE_CHARS`` long.
    """
    values: dict[str, dict[str, Any]] = {}
    for item in overrides:
        if len(item) > MAX_OVERRIDE_CHARS:
            raise AUFormerError(f"--set {show(item)}: longer than {MAX_OVERRIDE_CHARS} characters")
        name, sep, raw = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise AUFormerError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        values.setdefault(section, {})[key] = _parse_yaml(raw, f"--set {item!r}: the value")
    return values


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] = (), data_dir: str | None = None) -> Config:
    """Build a validated ``Config`` from a preset (name or YAML path), ``--set`` overrides and ``--data``."""
    values = _read_preset(preset)
    config = Config(preset=values.pop("preset", preset))
    config = apply_values(values, config)
    config = apply_values(parse_overrides(list(overrides)), config)
    if data_dir is not None:
        # Own data under the synthetic preset's settings is no longer "synthetic" (checkpoints record it).
        name = Path(data_dir).name if config.data.dataset == "synthetic" else config.data.dataset
        config = apply_values({"data": {"root": str(data_dir), "dataset": name}}, config)
    return validate(config)


def validate(config: Config) -> Config:
    """Cross-field checks that single-field rules cannot express."""
    data, train = config.data, config.train
    if data.dataset != "synthetic" and data.root is None:
        raise AUFormerError(f"preset {config.preset!r} needs a prepared dataset folder: pass --data DIR (see `auformer prepare`)")
    if data.val_fold is not None and data.val_fold == data.fold:
        raise AUFormerError(f"config data.val_fold: {data.val_fold} must differ from data.fold")
    if data.resize_size is not None and data.resize_size < data.img_size:
        raise AUFormerError(f"config data.resize_size: {data.resize_size} must be >= data.img_size ({data.img_size})")
    present = min(data.synthetic_subjects, data.synthetic_images)  # subjects that get at least one face
    if data.root is None and data.synthetic_folds > present:
        raise AUFormerError(
            f"config data.synthetic_folds: {data.synthetic_folds} must be <= the subjects with faces "
            f"({present}: data.synthetic_subjects, data.synthetic_images)"
        )
    for name in ("lr", "head_lr"):
        rate = getattr(train, name)
        if rate is not None and train.min_lr > rate:
            raise AUFormerError(f"config train.min_lr: {train.min_lr} must be <= train.{name} ({rate})")
    if train.threshold_search == "val" and data.val_fold is None:
        raise AUFormerError(
            "config train.threshold_search: val picks thresholds on a validation split, and there is none: "
            "pass --set data.val_fold=K (a fold held out of training; the test split is never used for it)"
        )
    if train.threshold_search != "none" and config.model.task == "intensity":
        raise AUFormerError("config train.threshold_search: model.task=intensity has no occurrence probabilities to threshold")
    _validate_switches(config)
    return config


def _validate_switches(config: Config) -> None:
    """Refuse ablation-switch combinations that have no meaning (docs/training.md, "Ablation switches")."""
    model, loss = config.model, config.loss
    if not model.collaborate and (model.aux_head or loss.aux_weight > 0):
        raise AUFormerError(
            "config model.collaborate: false (the paper's no-collaboration rows: one shared expert per group) "
            "has no per-AU experts for auxiliary heads; also pass --set model.aux_head=false --set loss.aux_weight=0"
        )
    if not model.aux_head and loss.aux_weight > 0:
        raise AUFormerError(
            f"config loss.aux_weight: {loss.aux_weight} weights an auxiliary loss, but model.aux_head is false; "
            "pass --set loss.aux_weight=0 (or keep the heads)"
        )


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what `--preset path.yaml` reads back)."""
    from auformer.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
