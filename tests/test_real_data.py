"""Real-data readiness (issue 9): backbone weights by name and offline, step budgets, refused
ablation combinations, and the dry run on the fake BP4D tree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import huggingface_hub
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file

from auformer.cli import main
from auformer.config import load_config
from auformer.data.converters.bp4d import prepare_bp4d
from auformer.engine.build import check_backbone_weights
from auformer.engine.schedule import plan_run, plan_schedule
from auformer.model import build_model
from fake_raw import make_fake_bp4d
from test_config import REAL_PRESETS

HUB_TAG = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # a real timm tag, shrunk by the kwargs below
TINY_KWARGS = dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)
BP4D_TAG = "vit_base_patch16_224.augreg_in1k"


@pytest.fixture(scope="module")
def fake_bp4d(tmp_path_factory):
    """The prepared fake BP4D tree (41 subjects, 2 frames each, 32 px crops)."""
    root = tmp_path_factory.mktemp("bp4d")
    make_fake_bp4d(root / "raw", frames=2)
    prepare_bp4d(root / "raw", root / "bp4d", align="none", size=32, workers=1)
    return root / "bp4d"


# ---------------------------------------------------------------- backbone weights


@pytest.mark.parametrize("preset", REAL_PRESETS)
def test_real_presets_ask_for_the_imagenet_1k_vit_from_the_hub(preset):
    model = load_config(preset, data_dir="d").model
    assert (model.backbone, model.backbone_weights) == (BP4D_TAG, "hub")
    assert load_config("synthetic").model.backbone_weights == "synthetic"


def test_offline_without_a_cached_copy_stops_before_reading_data_with_one_line(tmp_path):
    """HF_HUB_OFFLINE=1 and an empty HF_HOME, as on a compute node; --data points nowhere, so a data error would show."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "auformer", "cv", "--preset", "bp4d", "--data", str(tmp_path / "no_data"),
               "--out", str(tmp_path / "cv")]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for part in (BP4D_TAG, f"model.safetensors of the Hugging Face repo timm/{BP4D_TAG}", "--set model.backbone_weights=PATH"):
        assert part in lines[0]
    assert not (tmp_path / "cv").exists()


def _fill_hub_cache(cache, state_dict) -> str:
    """Lay out ``cache`` as huggingface_hub does: refs/main -> snapshots/<commit>/model.safetensors."""
    repo = cache / f"models--timm--{HUB_TAG}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    path = repo / "snapshots" / commit / "model.safetensors"
    save_file(state_dict, str(path))
    return str(path)


def test_hub_uses_a_cached_copy_offline(tmp_path, monkeypatch):
    torch.manual_seed(5)
    source = timm.create_model(HUB_TAG, num_classes=3, img_size=32, **TINY_KWARGS)  # stands in for the hub's file
    cached = _fill_hub_cache(tmp_path, source.state_dict())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    model = build_model(2, HUB_TAG, "hub", img_size=32, backbone_kwargs=TINY_KWARGS)
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, source.state_dict()[name], msg=name)
    assert model.config["backbone_weights"] == "hub"
    config = load_config("synthetic", ["model.backbone_weights=hub", f"model.backbone={HUB_TAG}"])
    assert check_backbone_weights(config) == cached


def test_random_backbone_is_named_and_warned_about(capsys):
    assert check_backbone_weights(load_config("synthetic", ["model.backbone_weights=random"])) == "random"
    warning = capsys.readouterr().err.strip()
    print(warning)
    assert warning.startswith("warning: backbone_weights is 'random'") and "\n" not in warning
    with pytest.raises(ValueError, match="not one of hub, synthetic, random nor a weight file"):
        load_config("synthetic", ["model.backbone_weights=imagenet"])
    with pytest.raises(ValueError, match="a random backbone is asked for as 'random'"):
        build_model(2, "vit_tiny_patch16_224", None, img_size=32, backbone_kwargs=TINY_KWARGS)


def test_python_api_message_names_the_keyword_and_no_setting_already_made(tmp_path, monkeypatch):
    from auformer.model.weights import hub_weights

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError) as offline:
        hub_weights(BP4D_TAG)  # what build_model(backbone_weights="hub") calls
    message = str(offline.value)
    assert "pass backbone_weights=PATH (CLI: --set model.backbone_weights=PATH)" in message
    assert message.endswith("or fill the Hugging Face cache")  # HF_HUB_OFFLINE=1 is set already: not suggested


def test_weights_download_offline_fails_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["weights", "download", BP4D_TAG, "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "HF_HUB_OFFLINE=1" in error and f"timm/{BP4D_TAG}" in error
    with pytest.raises(SystemExit):
        main(["weights", "download", "--help"])
    assert "--out DIR" in capsys.readouterr().out


# ---------------------------------------------------------------- training length


def test_schedule_in_epochs_and_in_steps():
    train = load_config("synthetic", ["train.epochs=5", "train.warmup_epochs=0.5"]).train
    epochs = plan_schedule(train, micro_per_epoch=32)
    assert (epochs.total_steps, epochs.warmup_steps, epochs.epochs) == (160, 16, 5)
    assert epochs.eval_points() == [32, 64, 96, 128, 160]
    short = plan_schedule(load_config("synthetic", ["train.steps=40"]).train, micro_per_epoch=32)
    assert (short.total_steps, short.epochs, short.warmup_steps) == (40, 2, 4)  # warm-up capped at 10% of the run
    assert short.eval_points() == [40]  # a step budget evaluates at the end unless asked
    every = plan_schedule(load_config("synthetic", ["train.steps=100", "train.eval_every_steps=30"]).train, 7)
    assert every.eval_points() == [35, 63, 91, 100]  # the epoch ends that pass 30, 60, 90, and the end
    casme2 = load_config("casme2", data_dir="d").train
    schedule = plan_run(casme2, train_size=191, full_train_size=191, micro_batch=64)
    assert (schedule.total_steps, schedule.warmup_steps, schedule.steps_per_epoch, schedule.epochs) == (1000, 50, 3, 334)


def test_data_efficiency_subsets_train_for_the_full_runs_steps():
    train = load_config("bp4d-data-efficiency", data_dir="d").train
    full = plan_run(train, 97_333, 97_333, micro_batch=64)
    assert (full.total_steps, full.warmup_steps) == (20 * 1521, 1521)
    for rate in (0.1, 0.01, 0.005, 0.001):
        subset = plan_run(train, int(97_333 * rate), 97_333, micro_batch=64)
        assert (subset.total_steps, subset.warmup_steps) == (full.total_steps, full.warmup_steps), rate
        assert subset.eval_points() == [full.total_steps]


# ---------------------------------------------------------------- ablation switches


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.collaborate=false"], "collaborate: false .* --set model.aux_head=false --set loss.aux_weight=0"),
        (["model.aux_head=false"], "loss.aux_weight: 1.0 weights an auxiliary loss, but model.aux_head is false"),
        (["loss.aux_weight=-1"], r"loss.aux_weight: -1.0 must be in \[0, 1000\]"),
        (["loss.eps=0"], r"loss.eps: 0.0 must be in \(0, 1e\+06\]"),
        (["loss.wdi_reduction=mean"], "not one of batch, sample"),
        (["train.steps=0"], r"train.steps: 0 must be in \[1, 1000000000\]"),
    ],
)
def test_meaningless_combinations_are_refused_in_one_line(overrides, message):
    with pytest.raises(ValueError, match=message) as error:
        load_config("synthetic", overrides)
    assert "\n" not in str(error.value)


def test_no_collaboration_ablation_without_aux_heads_is_accepted():
    config = load_config("synthetic", ["model.collaborate=false", "model.aux_head=false", "loss.aux_weight=0"])
    assert not config.model.collaborate
    both_off = load_config("synthetic", ["model.use_mrf=false", "model.use_ca=false"])  # the plain-expert row
    assert not (both_off.model.use_mrf or both_off.model.use_ca)


# ---------------------------------------------------------------- dry run


def test_dry_run_on_the_fake_bp4d_tree_prints_the_plan_without_training(fake_bp4d, tmp_path, capsys):
    out = tmp_path / "cv"
    argv = ["cv", "--preset", "bp4d", "--data", str(fake_bp4d), "--out", str(out), "--dry-run",
            "--set", "model.backbone_weights=random", "--set", "train.device=cpu"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    print(text)
    assert "3 folds of 13, 14, 14 test subjects" in text
    assert "every AU has positives in each test fold and each full training split (3 run(s))" in text
    assert "fold0: train 56 / test 26 samples; 1 steps an epoch, 20 steps (20 epochs), warm-up 1" in text
    assert "dry run passed" in text and "PROBLEM" not in text
    assert not out.exists()


def test_dry_run_lists_every_problem_then_fails_in_one_line(fake_bp4d, tmp_path, capsys, monkeypatch):
    data = tmp_path / "bp4d"
    data.mkdir()
    (data / "folds.json").write_text((fake_bp4d / "folds.json").read_text())
    manifest = pd.read_csv(fake_bp4d / "manifest.csv", dtype=str, keep_default_na=False)
    manifest["AU24"] = "0"  # no positive anywhere
    shutil.copytree(fake_bp4d / "images", data / "images")  # a manifest's images lie inside its folder
    manifest.to_csv(data / "manifest.csv", index=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    argv = [
        "data-efficiency",
        "--preset",
        "bp4d-data-efficiency",
        "--data",
        str(data),
        "--dry-run",
        "--out",
        str(tmp_path / "de"),
    ]
    assert main(argv) == 2
    captured = capsys.readouterr()
    print(captured.out)
    assert captured.out.count("PROBLEM") == 1 + 3  # the weights, and AU24 in each test fold
    assert "no positive of AU24 in the test split" in captured.out
    assert "the real run would go ahead, but the F1 of AU24 would say nothing: leave them out with " \
        "--set data.aus=[1,2,4,6,7,10,12,14,15,17,23]" in captured.out  # fmt: skip
    assert "rate0.1%/fold2" in captured.out
    assert captured.err.startswith("error: dry run found 4 problem(s); first: weights: backbone weights for timm tag")
    assert json.loads((fake_bp4d / "folds.json").read_text())  # the source tree is untouched
