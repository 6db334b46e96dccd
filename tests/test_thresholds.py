"""Per-AU thresholds tuned on a validation split (train.threshold_search=val): the search against
hand-computed values and against `au_metrics`, the refusal without a validation split, the thresholds
travelling from training to the checkpoint, `evaluate` and `detect`, and test labels never read for them."""

from __future__ import annotations

import json
import os
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from auformer.cli import main
from auformer.config import load_config
from auformer.data import read_folds
from auformer.data.synthetic import write_synthetic
from auformer.detect import Detector, parse_thresholds
from auformer.engine import protocols
from auformer.engine.outputs import cv_table_markdown, mean_metrics
from auformer.errors import AUFormerError
from auformer.metrics import THRESHOLD_GRID, au_metrics, search_thresholds
from auformer.model.auformer import build_model
from auformer.model.checkpoint import checkpoint_thresholds, read_checkpoint_meta, save_checkpoint
from test_train import write_tiny_preset

FUZZ = settings(max_examples=int(os.environ.get("AUFORMER_FUZZ_EXAMPLES", "200")), deadline=None)


def test_thresholds_are_picked_where_validation_f1_is_best():
    # AU 0: positives score 0.30-0.40, negatives 0.10-0.20 -> F1 = 1 for t in (0.20, 0.30]; the value nearest
    #   0.5 is 0.30 (at 0.5 nothing is predicted present: F1 0). The unknown row (-1) at 0.25 is ignored.
    # AU 1: positives 0.50-0.95, negatives 0.01-0.05 -> F1 = 1 for t in (0.05, 0.50]: a flat optimum keeps 0.5,
    #   and with the default 0.6 (outside it) the value nearest 0.6, 0.50.
    # AU 2: no known positive: keeps the default.
    probs = np.array([[0.30, 0.90, 0.7], [0.40, 0.95, 0.8], [0.10, 0.05, 0.2], [0.20, 0.01, 0.1], [0.25, 0.5, 0.9]])
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, -1], [-1, 1, -1]])
    assert search_thresholds(probs, labels).tolist() == [0.30, 0.50, 0.50]
    assert search_thresholds(probs, labels, default=0.6).tolist() == [0.30, 0.50, 0.6]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # AU 2 has no positive: au_metrics warns
        f1 = [au_metrics(probs, labels, threshold=t)["per_au"]["0"]["f1"] for t in (0.5, 0.3)]
    assert f1 == [0.0, 1.0]


@FUZZ
@given(
    st.integers(1, 30).flatmap(
        lambda rows: st.tuples(
            st.lists(st.sampled_from([0.0, 0.01, 0.2, 0.295, 0.3, 0.5, 0.7, 0.99, 1.0]), min_size=2 * rows, max_size=2 * rows),
            st.lists(st.sampled_from([0, 1, -1]), min_size=2 * rows, max_size=2 * rows),
        )
    ),
    st.integers(0, len(THRESHOLD_GRID) - 1),
)
def test_searched_thresholds_beat_every_grid_value_as_au_metrics_counts(data, other):
    """The searchsorted counts are au_metrics' own: no grid value scores a higher F1 than the one picked."""
    probs, labels = np.array(data[0]).reshape(-1, 2), np.array(data[1], dtype=float).reshape(-1, 2)
    chosen = search_thresholds(probs, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        best = au_metrics(probs, labels, threshold=chosen)["per_au"]
        rival = au_metrics(probs, labels, threshold=THRESHOLD_GRID[other])["per_au"]
    for column in range(2):
        if (labels[:, column] == 1).any():
            assert chosen[column] in THRESHOLD_GRID
            assert best[str(column)]["f1"] >= rival[str(column)]["f1"] - 1e-12
        else:
            assert chosen[column] == 0.5


def test_threshold_search_without_a_validation_split_is_refused():
    with pytest.raises(AUFormerError, match="no validation split|there is none.*data.val_fold"):
        load_config("synthetic", ["train.threshold_search=val"])
    with pytest.raises(AUFormerError, match="intensity"):
        load_config("synthetic", ["train.threshold_search=val", "data.val_fold=1", "model.task=intensity"])
    with pytest.raises(AUFormerError, match="threshold_search"):
        load_config("synthetic", ["train.threshold_search=test"])
    assert load_config("synthetic", ["train.threshold_search=val", "data.val_fold=1"]).train.threshold_search == "val"


def test_checkpoint_thresholds_are_checked_and_old_checkpoints_have_none(tmp_path, tiny_model_kwargs):
    model = build_model(2, aus=[1, 12], **tiny_model_kwargs)
    save_checkpoint(model, tmp_path / "old")
    assert checkpoint_thresholds(read_checkpoint_meta(tmp_path / "old")) is None
    save_checkpoint(model, tmp_path / "new", extra={"thresholds": {"AU12": 0.3, "AU01": 0.6}})
    assert checkpoint_thresholds(read_checkpoint_meta(tmp_path / "new")) == [0.6, 0.3]  # the model's AU order
    for bad, message in (
        ({"AU01": 0.6}, "must map each AU of aus"),
        ({"AU01": 0.6, "AU12": 0.3, "AU04": 0.5}, "must map each AU of aus"),
        ([0.6, 0.3], "must map each AU of aus"),
        ({"AU01": 1.5, "AU12": 0.3}, r"extra.thresholds.AU01: .*\[0, 1\]"),
        ({"AU01": "high", "AU12": 0.3}, "extra.thresholds.AU01"),
    ):
        save_checkpoint(model, tmp_path / "bad", extra={"thresholds": bad})
        with pytest.raises(AUFormerError, match=message):
            read_checkpoint_meta(tmp_path / "bad")


def test_mean_over_folds_and_the_table_carry_the_tuned_scores():
    def run(f1, tuned):
        per_au = {"AU01": {"f1": f1, "precision": f1, "recall": f1, "support": 2}}
        tuned_au = {"AU01": {"f1": tuned, "precision": tuned, "recall": tuned, "support": 2}}
        return {
            "mean_f1": f1, "per_au": per_au, "backbone_weights": "random",
            "tuned": {"thresholds": {"AU01": 0.3}, "mean_f1": tuned, "per_au": tuned_au},
        }  # fmt: skip

    mean = mean_metrics([run(0.2, 0.4), run(0.4, 0.8)])
    assert mean["mean_f1"] == pytest.approx(0.3) and mean["tuned"]["mean_f1"] == pytest.approx(0.6)
    assert mean["tuned"]["per_au"]["AU01"]["support"] == 4
    assert "| **Avg, tuned thresholds** | **40.0** | **80.0** |" in cv_table_markdown({"a": run(0.2, 0.4), "b": run(0.4, 0.8)})


def _poison_test_fold(source, out, fold: int) -> None:
    """A copy of the prepared folder ``source`` whose test-fold labels are all flipped (present <-> absent)."""
    shutil.copytree(source, out)
    manifest = pd.read_csv(out / "manifest.csv")
    test_rows = manifest["subject"].astype(str).isin(read_folds(out)[0][fold])
    columns = [c for c in manifest.columns if c.startswith("AU") and "_" not in c]  # occurrence, not AU12_int
    manifest.loc[test_rows, columns] = manifest.loc[test_rows, columns].replace({0: 1, 1: 0})
    manifest.to_csv(out / "manifest.csv", index=False)


@pytest.mark.slow
def test_tuned_thresholds_come_from_validation_only_and_reach_evaluate_and_detect(tmp_path, capsys):
    torch.set_num_threads(1)
    data = write_synthetic(tmp_path / "data", num_images=120, num_subjects=6, seed=0)
    _poison_test_fold(data, tmp_path / "poisoned", fold=0)
    preset = write_tiny_preset(tmp_path / "tiny.yaml", data={"fold": 0, "val_fold": 1}, train={"threshold_search": "val"})
    runs = {}
    for name in ("data", "poisoned"):
        config = load_config(preset, data_dir=str(tmp_path / name))
        runs[name] = protocols.train(config, tmp_path / f"run_{name}", verbose=False)
    stored = {name: read_checkpoint_meta(tmp_path / f"run_{name}" / "best")["extra"]["thresholds"] for name in runs}
    assert stored["data"] == stored["poisoned"]  # the test split's labels play no part in the choice
    assert runs["data"]["tuned"]["thresholds"] == stored["data"]
    assert runs["data"]["mean_f1"] != runs["poisoned"]["mean_f1"]  # ... though the poisoned test labels were scored
    assert any(value != 0.5 for value in stored["data"].values())

    # metrics.json's tuned scores are the test predictions at the stored thresholds
    predictions = pd.read_csv(tmp_path / "run_data" / "predictions.csv")
    aus = list(stored["data"])
    expected = au_metrics(predictions[[f"{au}_prob" for au in aus]].to_numpy(), predictions[[f"{au}_label" for au in aus]].to_numpy(), aus,
                          threshold=[stored["data"][au] for au in aus])  # fmt: skip
    assert runs["data"]["tuned"]["mean_f1"] == pytest.approx(expected["mean_f1"])

    # evaluate reads them from the checkpoint and reports both results; detect uses them unless told otherwise
    checkpoint = str(tmp_path / "run_data" / "best")
    assert main(["evaluate", checkpoint, "--preset", preset, "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    assert "F1 (tuned)" in capsys.readouterr().out
    scored = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert scored["tuned"]["thresholds"] == stored["data"]
    assert scored["mean_f1"] == pytest.approx(runs["data"]["mean_f1"], abs=1e-6)
    assert scored["tuned"]["mean_f1"] == pytest.approx(runs["data"]["tuned"]["mean_f1"], abs=1e-6)
    detector = Detector(checkpoint, face_detector="none")
    assert detector.thresholds.tolist() == list(stored["data"].values())
    assert Detector(checkpoint, face_detector="none", threshold=parse_thresholds(["0.7"])).thresholds.tolist() == [0.7] * 12
    one = Detector(checkpoint, face_detector="none", threshold=parse_thresholds(["AU12=0.3"])).thresholds
    assert one.tolist() == [0.3 if au == "AU12" else value for au, value in stored["data"].items()]
