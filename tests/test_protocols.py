"""Protocols end to end on tiny data: cv, data efficiency, cross-domain, and a bp4d-preset dry run
from a fake raw BP4D tree (prepare -> 3-fold cv -> F1 table)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from auformer.cli import main
from auformer.config import load_config
from auformer.data.converters.bp4d import prepare_bp4d
from auformer.data.synthetic import write_synthetic
from auformer.engine import protocols
from fake_raw import make_fake_bp4d
from test_train import TINY

ONE_EPOCH = ["train.epochs=1", "train.checkpoint_every=1000"]


def _tiny_overrides(*extra: str) -> list[str]:
    """TINY's model/input/train sections as --set strings (for real-data presets)."""
    sections = {"model": TINY["model"], "train": TINY["train"]}
    sections["data"] = {key: TINY["data"][key] for key in ("img_size", "resize_size", "color_jitter", "hflip", "num_workers")}
    return [f"{s}.{k}={json.dumps(v)}" for s, values in sections.items() for k, v in values.items()] + ONE_EPOCH + list(extra)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.slow
def test_cv_on_synthetic_writes_every_fold_and_their_mean(tmp_path):
    config = load_config("synthetic", _tiny_overrides("data.synthetic_images=120", "data.synthetic_subjects=6"))
    mean = protocols.cross_validate(config, tmp_path, verbose=False)
    folds = [json.loads((tmp_path / f"fold{k}" / "metrics.json").read_text()) for k in range(3)]
    assert mean == json.loads((tmp_path / "metrics.json").read_text())
    assert mean["mean_f1"] == pytest.approx(sum(f["mean_f1"] for f in folds) / 3)
    tested = [set(pd.read_csv(tmp_path / f"fold{k}" / "predictions.csv")["subject"]) for k in range(3)]
    assert not (tested[0] & tested[1]) and len(set.union(*tested)) == 6  # subject-exclusive, all covered
    table = (tmp_path / "table.md").read_text()
    assert "| AU | fold0 | fold1 | fold2 | mean |" in table and table.count("\n") == 2 + 12 + 1


@pytest.mark.slow
def test_bp4d_preset_dry_run_from_a_fake_raw_tree(tmp_path):
    make_fake_bp4d(tmp_path / "raw", frames=2)
    prepare_bp4d(tmp_path / "raw", tmp_path / "bp4d", align="none", size=32)
    config = load_config("bp4d", _tiny_overrides(), data_dir=str(tmp_path / "bp4d"))
    mean = protocols.cross_validate(config, tmp_path / "cv", verbose=False)
    table = (tmp_path / "cv" / "table.md").read_text()
    print(table)
    assert list(mean["per_au"]) == [
        "AU01",
        "AU02",
        "AU04",
        "AU06",
        "AU07",
        "AU10",
        "AU12",
        "AU14",
        "AU15",
        "AU17",
        "AU23",
        "AU24",
    ]
    assert "| AU | fold0 | fold1 | fold2 | mean |" in table
    fold_sizes = [len(pd.read_csv(tmp_path / "cv" / f"fold{k}" / "predictions.csv")) for k in range(3)]
    assert fold_sizes == [2 * 13, 2 * 14, 2 * 14]  # the JAA-Net folds: 13, 14, 14 subjects


@pytest.mark.slow
def test_data_efficiency_subsamples_training_only(tmp_path):
    overrides = _tiny_overrides("data.synthetic_images=120", "data.synthetic_subjects=6", "data.cv_folds=[0]",
                                "data.data_efficiency_rates=[0.5, 0.1]")  # fmt: skip
    runs = protocols.data_efficiency(load_config("synthetic", overrides), tmp_path, verbose=False)
    assert list(runs) == ["rate50%", "rate10%"]
    for name, samples in (("rate50%", 40), ("rate10%", 8)):  # 80 training faces in fold 0
        extra = json.loads((tmp_path / name / "fold0" / "best.json").read_text())["extra"]
        assert extra["train_samples"] == samples
        assert len(pd.read_csv(tmp_path / name / "fold0" / "predictions.csv")) == 40  # test unchanged
    assert "| AU | rate50% | rate10% |" in (tmp_path / "table.md").read_text()


@pytest.mark.slow
def test_cross_domain_tests_on_the_whole_target(tmp_path):
    write_synthetic(tmp_path / "source", num_images=60, num_subjects=6, seed=0)
    write_synthetic(tmp_path / "target", num_images=30, num_subjects=3, seed=1)
    overrides = _tiny_overrides(f"data.target_root={tmp_path / 'target'}", "data.cv_folds=[2]")
    mean = protocols.cross_validate(
        load_config("bp4d-to-disfa", overrides, data_dir=str(tmp_path / "source")), tmp_path / "cd", verbose=False
    )
    assert list(mean["per_au"]) == ["AU01", "AU02", "AU04", "AU06", "AU12"]
    predictions = pd.read_csv(tmp_path / "cd" / "fold2" / "predictions.csv")
    assert len(predictions) == 30 and predictions["image"].str.startswith("images/").all()
    extra = json.loads((tmp_path / "cd" / "fold2" / "best.json").read_text())["extra"]
    assert extra["train_samples"] == 40  # source folds 0 and 1: 4 of 6 subjects

    # The same checkpoint re-scored through the CLI: on the whole target, and on list files of it.
    checkpoint, target = str(tmp_path / "cd" / "fold2" / "best"), tmp_path / "target"
    assert main(["evaluate", checkpoint, "--target", str(target), "--out", str(tmp_path / "ev")]) == 0
    aus = list(mean["per_au"])
    (tmp_path / "img.txt").write_text("\n".join(predictions["image"]) + "\n")
    (tmp_path / "lbl.txt").write_text(
        "\n".join(" ".join(map(str, row)) for row in predictions[[f"{au}_label" for au in aus]].to_numpy()) + "\n"
    )
    listed = ["--list", str(tmp_path / "img.txt"), str(tmp_path / "lbl.txt"), "--image-root", str(target)]
    assert main(["evaluate", checkpoint, *listed, "--out", str(tmp_path / "ev_list")]) == 0
    for folder in ("ev", "ev_list"):
        assert json.loads((tmp_path / folder / "metrics.json").read_text())["mean_f1"] == pytest.approx(mean["mean_f1"], abs=1e-6)
