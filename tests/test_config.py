"""Config dataclasses, presets and --set overrides: values, types and error messages."""

from __future__ import annotations

import pytest

from auformer.config import Config, load_config, parse_overrides, preset_names, save_config

REAL_PRESETS = (
    "bp4d",
    "disfa",
    "casme2",
    "bp4d-to-disfa",
    "disfa-to-bp4d",
    "bp4d-data-efficiency",
    "disfa-intensity",
    "bp4d-intensity",
)


def test_every_paper_experiment_has_a_preset():
    assert set(preset_names()) == {"synthetic", *REAL_PRESETS}


@pytest.mark.parametrize(
    ("preset", "margin", "num_aus"),
    [("bp4d", 0.1, 12), ("disfa", 0.15, 8), ("casme2", 0.3, 8), ("bp4d-to-disfa", 0.1, 5), ("disfa-to-bp4d", 0.15, 5)],
)
def test_real_presets_carry_the_paper_margin_and_au_set(preset, margin, num_aus):
    config = load_config(preset, data_dir="data/x")
    assert config.loss.margin == margin
    assert len(config.data.aus) == num_aus
    assert config.model.backbone.startswith("vit_base_patch16_224")
    assert config.data.root == "data/x"


def test_real_preset_without_data_dir_says_how_to_fix_it():
    with pytest.raises(ValueError, match="--data DIR"):
        load_config("bp4d")


def test_own_data_under_the_synthetic_preset_is_named_after_its_folder():
    assert load_config("synthetic").data.dataset == "synthetic"
    config = load_config("synthetic", data_dir="data/my_faces")
    assert (config.data.dataset, config.data.root) == ("my_faces", "data/my_faces")


@pytest.mark.parametrize(
    ("preset", "aus"), [("disfa-intensity", [1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26]), ("bp4d-intensity", [6, 10, 12, 14, 17])]
)
def test_intensity_presets_name_the_coded_aus(preset, aus):
    config = load_config(preset, data_dir="d")
    assert config.data.aus == aus and config.model.task == "intensity"


def test_task_is_validated():
    with pytest.raises(ValueError, match="config model.task: 'intensities' is not one of occurrence, intensity, both"):
        load_config("synthetic", ["model.task=intensities"])


def test_data_efficiency_preset_has_the_paper_rates():
    assert load_config("bp4d-data-efficiency", data_dir="d").data.data_efficiency_rates == [0.1, 0.01, 0.005, 0.001]


def test_overrides_are_parsed_as_yaml_and_type_checked():
    config = load_config("synthetic", ["train.lr=3e-4", "train.epochs=2", "data.aus=[1, 2, 4]", "train.grad_clip=null"])
    assert config.train.lr == pytest.approx(3e-4) and isinstance(config.train.lr, float)
    assert config.train.epochs == 2
    assert config.data.aus == [1, 2, 4]
    assert config.train.grad_clip is None
    assert isinstance(load_config("synthetic", ["train.lr=1"]).train.lr, float)  # int accepted for a float


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1e-3", "unknown config key 'train.lrr' \\(did you mean 'train.lr'\\?\\)"),
        ("trian.lr=1e-3", "unknown config key 'trian' \\(did you mean 'train'\\?\\)"),
        ("train.epochs=1.5", "train.epochs: 1.5 is not a valid int"),
        ("train.lr=fast", "train.lr: 'fast' is not a valid float"),
        ("data.aus=[one]", "data.aus"),
        ("train.amp=fp8", "not one of none, bf16, fp16"),
        ("loss.name=focal", "not one of mdwa, dwa, mwa, wa, wce"),
        ("train.lr", "expected section.key=value"),
        ("train.epochs=0", r"train.epochs: 0 must be in \[1, 100000\]"),
    ],
)
def test_bad_overrides_fail_with_a_message_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("synthetic", [override])


def test_override_values_are_never_evaluated():
    assert parse_overrides(["train.device=__import__('os')"]) == {"train": {"device": "__import__('os')"}}
    with pytest.raises(ValueError, match="not one of auto, cpu, cuda"):
        load_config("synthetic", ["train.device=__import__('os')"])


def test_unknown_preset_suggests_the_closest_name(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'bp4d'"):
        load_config("bp4e")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(str(tmp_path / "missing.yaml"))


def test_saved_config_reads_back_identically(tmp_path):
    config = load_config("disfa", ["train.lr=2e-4", "model.dilations=[1, 3]"], data_dir=str(tmp_path))
    save_config(config, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again == config
    assert isinstance(again, Config)
