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
    "ckplus",
    "affwild2",
)


def test_every_paper_experiment_has_a_preset():
    assert set(preset_names()) == {"synthetic", *REAL_PRESETS}


@pytest.mark.parametrize(
    ("preset", "margin", "num_aus"),
    [
        ("bp4d", 0.1, 12),
        ("disfa", 0.15, 8),
        ("casme2", 0.3, 8),
        ("bp4d-to-disfa", 0.1, 5),
        ("disfa-to-bp4d", 0.15, 5),
        ("affwild2", 0.1, 12),
    ],
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


# ---------------------------------------------------------------- every field's range (issue 18)

import dataclasses  # noqa: E402

from auformer.config import FIELD_RULES, DataConfig, TrainConfig  # noqa: E402


def test_every_field_of_every_section_has_a_rule():
    names = {"preset"} | {
        f"{section.name}.{field.name}"
        for section in dataclasses.fields(Config)
        if section.name != "preset"
        for field in dataclasses.fields(section.default_factory())
    }
    assert set(FIELD_RULES) == names


@pytest.mark.parametrize(
    ("override", "message"),
    [  # the cases, which passed --dry-run and failed (or trained with a negative rate) later
        ("train.threshold=2", r"config train.threshold: 2.0 must be in \[0, 1\]"),
        ("train.min_lr=-1", r"config train.min_lr: -1.0 must be in \[0, 10\]"),
        ("train.betas=[2,3]", r"config train.betas: \[2.0, 3.0\]: 2.0 must be in \[0, 1\)"),
        ("data.num_workers=-1", r"config data.num_workers: -1 must be in \[0, 256\]"),
        ("data.img_size=0", r"config data.img_size: 0 must be in \[1, 4096\]"),
        ("train.head_lr=-1", r"config train.head_lr: -1.0 must be in \(0, 10\]"),
        # and their siblings
        ("train.lr=.nan", r"config train.lr: nan must be in \(0, 10\]"),
        ("train.lr=1e400", r"config train.lr: inf must be in \(0, 10\]"),
        ("train.grad_clip=0", r"config train.grad_clip: 0.0 must be in \(0, 1e\+06\]"),
        ("train.betas=[0.9]", r"config train.betas: \[0.9\] has 1 values; exactly 2 allowed"),
        ("train.seed=-1", r"config train.seed: -1 must be in \[0, 2147483647\]"),
        ("train.min_lr=0.1", r"config train.min_lr: 0.1 must be <= train.lr \(0.01\)"),
        ("data.aus=[1, 1]", r"config data.aus: \[1, 1\]: the values must differ"),
        ("data.aus=[3]", r"config data.aus: \[3\]: 3 is not a FACS action unit"),
        ("data.resize_size=16", r"config data.resize_size: 16 must be >= data.img_size \(64\)"),
        ("data.synthetic_folds=100", r"config data.synthetic_folds: 100 must be <= the subjects with faces \(60"),
        ("data.dataset=''", "config data.dataset: '' must be a non-empty name"),
        ("data.root=''", "config data.root: '' must be a non-empty path"),
        ("model.ca_size=4", "config model.ca_size: 4 must be odd"),
        ("model.dilations=[]", r"config model.dilations: \[\] has 0 values; 1 to 8 allowed"),
        ("model.scale=0", r"config model.scale: 0.0 must be in \(0, 1000\]"),
        (
            "model.backbone_kwargs={embed_dim: 1048576}",
            r"config model.backbone_kwargs: embed_dim: 1048576 must be in \[1, 8192\]",
        ),
        ("model.backbone_kwargs={depth: [1]}", r"config model.backbone_kwargs: depth: \[1\] must be a number"),
        ("loss.gamma_bounds=[1, 2, 3]", r"config loss.gamma_bounds: \[1.0, 2.0, 3.0\] has 3 values; exactly 2 allowed"),
        ("loss.eps=0", r"config loss.eps: 0.0 must be in \(0, 1e\+06\]"),
    ],
)
def test_out_of_range_values_name_field_value_and_range(override, message):
    with pytest.raises(ValueError, match=message) as error:
        load_config("synthetic", [override])
    assert "\n" not in str(error.value)


def test_configs_built_in_python_are_checked_too():
    with pytest.raises(ValueError, match=r"config train.lr: -1.0 must be in \(0, 10\]"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match=r"config data.fold: -1 must be in \[0, 99\]"):
        dataclasses.replace(DataConfig(), fold=-1)
    assert isinstance(TrainConfig(lr=1).lr, float)


def test_dry_run_and_the_run_stop_at_the_same_line(tmp_path, capsys):
    from auformer.cli import main

    for argv in (["--dry-run"], []):
        assert main(["train", "--set", "train.threshold=2", "--out", str(tmp_path / "run"), *argv]) == 2
        assert capsys.readouterr().err.strip() == "error: config train.threshold: 2.0 must be in [0, 1]"
    assert not (tmp_path / "run").exists()  # refused before any work


def test_yaml_size_and_shape_caps(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text("data:\n  cv_folds: [" + ", ".join(["1"] * 40_000) + "]\n")
    with pytest.raises(ValueError, match="huge.yaml: larger than 64 kB"):
        load_config(str(huge))
    long = tmp_path / "long.yaml"
    long.write_text("data:\n  cv_folds: [" + ", ".join(["1"] * 1000) + "]\n")  # 6 kB: read, then refused by length
    with pytest.raises(ValueError, match=r"config data.cv_folds: \[1, 1, .* has 1000 values; 1 to 100 allowed"):
        load_config(str(long))
    deep = tmp_path / "deep.yaml"
    deep.write_text("data: " + "[" * 20_000 + "]" * 20_000)
    with pytest.raises(ValueError, match="deep.yaml: YAML nested too deeply"):
        load_config(str(deep))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"data: {dataset: \xff\xfe}")
    with pytest.raises(ValueError, match="binary.yaml: not UTF-8 text"):
        load_config(str(binary))
    aliases = tmp_path / "aliases.yaml"  # shared references: never expanded, refused by their type
    aliases.write_text("a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\ndata: {cv_folds: [*b, *b, *b]}\n")
    with pytest.raises(ValueError, match="unknown config key 'a'"):
        load_config(str(aliases))
    with pytest.raises(ValueError, match="longer than 4096 characters"):
        load_config("synthetic", ["data.aus=[" + ",".join(["1"] * 3000) + "]"])
    (tmp_path / "preset.yaml").write_text("preset: 3\n")
    with pytest.raises(ValueError, match="config preset: 3 is not a valid str"):
        load_config(str(tmp_path / "preset.yaml"))


def test_docs_list_every_field_with_its_rule():
    """docs/training.md's table of valid values is the table the code checks (field, type, rule)."""
    import re
    from pathlib import Path

    from auformer.config import field_spec

    text = (Path(__file__).parent.parent / "docs" / "training.md").read_text()
    rows = dict(re.findall(r"^\| `((?:data|model|loss|train)\.[a-z_]+)` \| (.+) \|$", text, flags=re.M))
    expected = {}
    for name, rule in FIELD_RULES.items():
        if name != "preset":
            hint = str(field_spec(name)[0]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            kind = hint.replace(" | None", " or null").replace("list[", "list of ").replace("dict[str, Any]", "mapping")
            expected[name] = f"{kind.replace(']', '')} | {rule.describe() if rule else 'true or false'}"
    assert rows == expected


def test_a_model_that_cannot_be_built_is_refused_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    from auformer.cli import main

    argv = ["train", "--set", "data.img_size=36", "--set", "data.resize_size=36", "--out", str(tmp_path / "run")]
    assert main([*argv, "--dry-run"]) == 2
    line = "img_size 36 is not a multiple of vit_tiny_patch16_224's patch size 8"
    assert capsys.readouterr().err.strip() == f"error: dry run found 1 problem(s); first: model: {line}"
    monkeypatch.setattr("auformer.engine.trainer.load_source", lambda *args: pytest.fail("data read before the model check"))
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == f"error: {line}"


def test_lora_targets_rule_is_petls_list():
    from auformer.model.petl import LORA_TARGETS

    assert FIELD_RULES["model.lora_targets"].choices == LORA_TARGETS
