"""AU intensity beside occurrence: ICC/r/MAE against independent computations, loss, heads, data, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import pearsonr
from skimage import data

import auformer
from auformer.cli import main
from auformer.config import load_config
from auformer.data import AUTable, read_manifest, write_manifest
from auformer.data.synthetic import generate_synthetic
from auformer.detect import Detector
from auformer.engine import build, outputs, protocols, trainer
from auformer.export import export_model
from auformer.losses import intensity_loss
from auformer.metrics import icc_3_1, intensity_metrics, intensity_table_markdown
from auformer.model.checkpoint import load_adapter_weights
from test_train import write_tiny_preset

TINY_VIT = {
    "backbone": "vit_tiny_patch16_224",
    "backbone_weights": "random",
    "img_size": 32,
    "backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}


# ---------------------------------------------------------------- metrics


def test_icc_3_1_hand_worked_two_way_mixed_anova():
    """Shrout & Fleiss ICC(3,1) worked by hand for 4 frames x 2 raters (model, annotation).

    Table (pred, truth): (1,2) (2,2) (3,4) (4,5); grand mean 23/8. Row means 1.5, 2, 3.5, 4.5:
    SS_rows = 2 * 5.6875 = 11.375. Column means 2.5, 3.25: SS_cols = 4 * 0.28125 = 1.125.
    SS_total = 5.5625 + 7.3125 = 12.875, so SS_error = 0.375. MS_rows = 11.375/3, MS_error = 0.375/3.
    ICC = (MS_rows - MS_error) / (MS_rows + MS_error) = (11/3) / (47/12) = 44/47.
    """
    assert icc_3_1(np.array([1.0, 2, 3, 4]), np.array([2.0, 2, 4, 5])) == pytest.approx(44 / 47, abs=1e-12)


def test_icc_and_pearson_agree_with_independent_formulas():
    """ICC(3,1) of two raters equals 2 cov / (var_x + var_y) (the consistency form); r comes from scipy."""
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, 200).astype(float)
    pred = np.clip(truth + rng.normal(0, 1.2, 200) + 0.7, 0, 5)
    covariance = np.cov(pred, truth)  # (2, 2), ddof 1
    expected_icc = 2 * covariance[0, 1] / (covariance[0, 0] + covariance[1, 1])
    metrics = intensity_metrics(pred[:, None], truth[:, None], aus=[12])
    scores = metrics["per_au"]["AU12"]
    assert scores["icc"] == pytest.approx(expected_icc, abs=1e-10)
    assert scores["pearson"] == pytest.approx(pearsonr(pred, truth).statistic, abs=1e-10)
    assert scores["mae"] == pytest.approx(np.abs(pred - truth).mean()) and scores["known"] == 200
    assert set(metrics) == {"mean_icc", "mean_pearson", "mean_mae", "per_au"}
    assert set(scores) == {"icc", "pearson", "mae", "known"}
    # A constant offset costs MAE but not r; ICC(3,1) (consistency) ignores it too.
    shifted = intensity_metrics((truth + 1)[:, None], truth[:, None])["per_au"]["0"]
    assert (
        shifted["icc"] == pytest.approx(1.0) and shifted["pearson"] == pytest.approx(1.0) and shifted["mae"] == pytest.approx(1.0)
    )


def test_unknown_targets_are_excluded_and_uncoded_aus_left_out_of_the_means():
    pred = np.array([[1.0, 0.0, 2.0], [2.0, 1.0, 2.0], [3.0, 2.0, 2.0], [4.0, 3.0, 2.0], [5.0, 4.0, 2.0]])
    target = np.array([[2.0, -1, 1], [2.0, -1, 2], [4.0, -1, 3], [5.0, -1, 4], [np.nan, -1, 5]])  # (5, 3)
    metrics = intensity_metrics(pred, target, aus=[6, 10, 12])
    first = metrics["per_au"]["AU06"]
    assert first["known"] == 4 and first["icc"] == pytest.approx(44 / 47)  # the NaN row is dropped: the hand example
    assert metrics["per_au"]["AU10"]["known"] == 0 and np.isnan(metrics["per_au"]["AU10"]["icc"])  # never coded
    constant = metrics["per_au"]["AU12"]  # constant prediction: r undefined, counts 0 in the mean
    assert np.isnan(constant["pearson"]) and constant["mae"] == pytest.approx(1.4)
    assert metrics["mean_pearson"] == pytest.approx((first["pearson"] + 0.0) / 2)
    assert metrics["mean_mae"] == pytest.approx((first["mae"] + 1.4) / 2)
    assert constant["icc"] == 0.0 and metrics["mean_icc"] == pytest.approx(first["icc"] / 2)


def test_icc_of_a_constant_rater_is_zero_and_of_two_constants_undefined():
    """ICC(3,1) = 0 when one rater is constant (no consistency); both constant is 0/0: NaN, shown "n/a"."""
    varying = np.array([0.0, 1.5, 2.0, 4.0, 5.0, 3.0, 0.5])
    assert icc_3_1(np.full(7, 0.1), varying) == 0.0 and icc_3_1(varying, np.full(7, 2.0)) == 0.0
    for pred, truth, frames in ((0.1, 0.7, 3), (0.1, 0.7, 33), (1.3, 2.0, 3), (0.3, 4.7, 7)):  # the ANOVA sums gave +-1
        assert np.isnan(icc_3_1(np.full(frames, pred), np.full(frames, truth)))
    pred = np.stack([np.full(7, 0.1), np.full(7, 0.1), varying], axis=1)  # (7, 3)
    target = np.stack([varying, np.full(7, 3.0), -np.ones(7)], axis=1)  # AU 3 never coded
    metrics = intensity_metrics(pred, target, aus=[1, 2, 4])
    table = intensity_table_markdown(metrics).splitlines()
    assert table[2].startswith("| AU01 | Inner Brow Raiser | 0.000 | n/a | ")  # constant prediction: ICC 0, r undefined
    assert table[3].startswith("| AU02 | Outer Brow Raiser | n/a | n/a | ")  # both constant: both undefined
    assert table[4] == "| AU04 | Brow Lowerer | n/a | n/a | n/a | 0 |"
    assert metrics["mean_icc"] == 0.0 and table[5].startswith("| **Mean** | | **0.000** | **0.000** |")
    nothing = intensity_table_markdown(intensity_metrics(pred[:, 2:], target[:, 2:]))  # no AU scored at all
    assert nothing.splitlines()[-1] == "| **Mean** | | n/a | n/a | n/a | |"


QUARTERS = st.integers(0, 20).map(lambda q: q / 4)  # intensities and predictions on an exact 0.25 grid


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(QUARTERS, QUARTERS), min_size=0, max_size=12), QUARTERS, QUARTERS)
def test_icc_equals_the_anova_form_wherever_defined(pairs, shift_pred, shift_truth):
    """Against the two-way ANOVA written out (Shrout & Fleiss), including constant raters; NaN exactly when
    fewer than 2 frames or both raters constant; symmetric; a constant offset of either rater changes nothing."""
    pred, truth = (np.array(column, dtype=float) for column in zip(*pairs)) if pairs else (np.zeros(0), np.zeros(0))
    icc = icc_3_1(pred, truth)
    if len(pairs) < 2 or (np.ptp(pred) == 0 and np.ptp(truth) == 0):
        assert np.isnan(icc)
        return
    table = np.stack([pred, truth], axis=1)  # (M, 2)
    rows = len(pairs)
    grand = table.mean()
    ss_rows = 2 * ((table.mean(axis=1) - grand) ** 2).sum()
    ss_columns = rows * ((table.mean(axis=0) - grand) ** 2).sum()
    ms_rows = ss_rows / (rows - 1)
    ms_error = (((table - grand) ** 2).sum() - ss_rows - ss_columns) / (rows - 1)
    assert icc == pytest.approx((ms_rows - ms_error) / (ms_rows + ms_error), abs=1e-9)
    assert -1.0 <= icc <= 1.0
    assert icc_3_1(truth, pred) == icc
    assert icc_3_1(pred + shift_pred, truth + shift_truth) == pytest.approx(icc, abs=1e-12)
    if np.ptp(pred) == 0 or np.ptp(truth) == 0:
        assert icc == 0.0


# ---------------------------------------------------------------- loss and model


def test_intensity_loss_is_masked_scaled_mse():
    pred = torch.tensor([[5.0, 0.0], [2.5, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, -1.0], [5.0, float("nan")]])  # two unknown entries
    loss = intensity_loss(pred, target)
    assert loss.item() == pytest.approx((1.0 + 0.25) / 2)  # ((5-0)/5)^2 and ((2.5-5)/5)^2 over 2 known
    loss.backward()
    assert pred.grad[0, 1] == 0 and pred.grad[1, 1] == 0 and torch.isfinite(pred.grad).all()
    assert intensity_loss(pred, torch.full((2, 2), -1.0)).item() == 0.0


@pytest.mark.parametrize("task", ["intensity", "both"])
def test_intensity_heads_shapes_range_and_gradients(task):
    model = auformer.build_model(3, aus=[6, 12, 25], task=task, **TINY_VIT)
    output = model(torch.randn(2, 3, 32, 32))
    assert output.intensity.shape == output.aux_intensity.shape == (2, 3)
    assert ((output.intensity >= 0) & (output.intensity <= 5)).all()
    assert (output.logits is None) == (task == "intensity") and (output.aux_logits is None) == (task == "intensity")
    total = output.intensity.sum() + output.aux_intensity.sum() + (output.logits.sum() if output.logits is not None else 0)
    total.backward()
    heads = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("intensity.")]
    assert sorted(heads) == [
        "intensity.aux_head.bias",
        "intensity.aux_head.weight",
        "intensity.head.bias",
        "intensity.head.weight",
    ]
    assert all(p.grad is not None for n, p in model.named_parameters() if n in heads)
    with pytest.raises(ValueError, match="task must be one of occurrence, intensity, both"):
        auformer.build_model(3, task="intensities", **TINY_VIT)


def test_checkpoint_records_the_task_and_another_task_fails_clearly(tmp_path):
    model = auformer.build_model(2, aus=[6, 12], task="both", **TINY_VIT)
    auformer.save_checkpoint(model, tmp_path / "both")
    loaded = auformer.load_checkpoint(tmp_path / "both")
    assert loaded.task == "both" and json.loads((tmp_path / "both.json").read_text())["config"]["task"] == "both"
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(images).intensity, model.eval()(images).intensity)
    occurrence_model = auformer.build_model(2, aus=[6, 12], **TINY_VIT)
    with pytest.raises(ValueError, match="trained for task 'both', the model is built for task 'occurrence'"):
        load_adapter_weights(occurrence_model, tmp_path / "both")


# ---------------------------------------------------------------- data


def test_manifest_intensity_columns_round_trip_and_errors(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    intensity = np.array([[3.0, -1.0], [0.0, -1.0]], np.float32)  # AU12 never coded: no AU12_int column
    table = AUTable(tmp_path, ["a.png", "b.png"], ["S1", "S2"], np.array([[1, 0], [0, -1]]), [6, 12], intensity)
    write_manifest(table, tmp_path)
    lines = (tmp_path / "manifest.csv").read_text().splitlines()
    assert lines == ["image,subject,AU06,AU12,AU06_int", "a.png,S1,1,0,3", "b.png,S2,0,,0"]
    back = read_manifest(tmp_path)
    np.testing.assert_array_equal(back.intensity, intensity)
    np.testing.assert_array_equal(back.select_aus([12, 6]).intensity, intensity[:, ::-1])
    assert read_manifest(tmp_path).subset([1]).intensity.tolist() == [[0.0, -1.0]]
    (tmp_path / "manifest.csv").write_text("image,subject,AU06,AU06_int\na.png,S1,1,2.5\nb.png,S2,0,7\n")
    with pytest.raises(ValueError, match=r"manifest.csv: line 3, column AU06_int: invalid intensity '7' \(allowed: 0 to 5"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("image,subject,AU06,AU12_int\na.png,S1,1,2\n")
    with pytest.raises(ValueError, match="intensity column 'AU12_int' has no occurrence column AU12"):
        read_manifest(tmp_path)


def test_synthetic_intensities_on_the_facs_scale():
    faces = generate_synthetic(num_images=40, size=32, seed=3, num_subjects=4)
    active = faces.clean_labels == 1
    assert (faces.intensities[~active] == 0).all()
    assert (faces.intensities[active] >= 4.0).all() and (faces.intensities[active] <= 5.0).all()


# ---------------------------------------------------------------- training, evaluation, outputs


@pytest.fixture(scope="module")
def both_run(tmp_path_factory) -> tuple[Path, dict]:
    """A 2-epoch tiny run with both tasks (the synthetic preset's data, shrunk)."""
    run_dir = tmp_path_factory.mktemp("both")
    config = load_config(write_tiny_preset(run_dir.parent / "both.yaml", model={"task": "both"}))
    torch.set_num_threads(1)
    return run_dir, protocols.train(config, run_dir, verbose=False)


@pytest.mark.slow
def test_training_with_both_tasks_writes_both_metric_families(both_run, tmp_path):
    run_dir, metrics = both_run
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert set(saved) == {"mean_f1", "per_au", "intensity", "backbone_weights"} and saved == json.loads(json.dumps(metrics))
    assert set(saved["intensity"]) == {"mean_icc", "mean_pearson", "mean_mae", "per_au"}
    assert "| AU12 | Lip Corner Puller |" in (run_dir / "per_au_intensity.md").read_text()
    predictions = pd.read_csv(run_dir / "predictions.csv")
    assert {"AU12_prob", "AU12_label", "AU12_int_pred", "AU12_int_label"} <= set(predictions.columns)
    mae = np.abs(predictions["AU12_int_pred"] - predictions["AU12_int_label"]).mean()
    assert mae == pytest.approx(saved["intensity"]["per_au"]["AU12"]["mae"], abs=1e-5)
    # evaluate with the run's own config gives the same numbers; another task is refused in one line
    config = load_config(str(run_dir / "config.yaml"))
    again = protocols.evaluate(run_dir / "best", config, tmp_path / "eval", verbose=False)
    assert again["intensity"]["mean_icc"] == pytest.approx(saved["intensity"]["mean_icc"], abs=1e-5)
    assert (
        main(
            [
                "evaluate",
                str(run_dir / "best"),
                "--preset",
                str(run_dir / "config.yaml"),
                "--set",
                "model.task=occurrence",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )


def test_intensity_needs_intensity_annotations(tmp_path, monkeypatch):
    def no_intensity(config, root=None):
        source = original(config, root)
        source.table.intensity = None
        return source

    original = trainer.load_source
    monkeypatch.setattr(trainer, "load_source", no_intensity)
    config = load_config(write_tiny_preset(tmp_path / "t.yaml", model={"task": "intensity"}))
    with pytest.raises(ValueError, match="model.task: 'intensity' needs intensity annotations"):
        trainer.Trainer(config, tmp_path / "run", verbose=False).setup()


@pytest.mark.slow
def test_adapters_learn_intensity_far_above_chance(tmp_path, monkeypatch):
    """Intensity drawn as brightness of the left half: a trained tiny model must track it (r, ICC > 0.8)."""

    def graded_source(config, root=None) -> build.Source:
        rng = np.random.default_rng(0)
        levels = rng.integers(0, 6, (240, 1)).astype(np.float32)  # (M, 1)
        images = rng.integers(0, 40, (240, 32, 32, 3)).astype(np.uint8)
        images[:, :, :16] += (40 * levels[:, 0]).astype(np.uint8)[:, None, None, None]
        subjects = [f"S{i % 12:02d}" for i in range(240)]
        table = AUTable(
            Path("."), [f"synthetic/{i:05d}.png" for i in range(240)], subjects, (levels >= 2).astype(np.float32), [12], levels
        )
        return build.Source(table, [[f"S{j:02d}" for j in range(k, 12, 3)] for k in range(3)], images)

    monkeypatch.setattr(trainer, "load_source", graded_source)
    torch.set_num_threads(1)
    config = load_config(
        write_tiny_preset(tmp_path / "t.yaml", model={"task": "intensity"}, train={"epochs": 4, "head_lr": 1e-2})
    )
    metrics = protocols.train(config, tmp_path / "run", verbose=False)
    scores = metrics["intensity"]["per_au"]["AU12"]
    assert scores["pearson"] > 0.8 and scores["icc"] > 0.8 and scores["mae"] < 1.0, scores  # chance: r ~ 0, MAE ~ 1.5


@pytest.fixture(scope="module")
def both_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = auformer.build_model(3, aus=[1, 6, 12], task="both", **TINY_VIT)
    torch.nn.init.normal_(model.intensity.head.weight, std=0.5)  # spread the intensities over the scale
    path = tmp_path_factory.mktemp("ckpt") / "both"
    auformer.save_checkpoint(model, path, extra={"dataset": "synthetic"})
    return path


@pytest.mark.slow
def test_detect_writes_intensity_columns_openface_style(both_checkpoint, tmp_path):
    detector = Detector(both_checkpoint)
    table = detector.detect(data.astronaut())
    model = auformer.load_checkpoint(both_checkpoint)
    crop_outputs = detector.predict([np.zeros((256, 256, 3), np.uint8)])
    assert set(crop_outputs) == {"probs", "intensity"}
    with torch.no_grad():
        expected = model(torch.stack([detector.transform(np.zeros((256, 256, 3), np.uint8))])).intensity.numpy()
    np.testing.assert_allclose(crop_outputs["intensity"], expected, atol=1e-6)
    values = table.loc[0, ["AU01_r", "AU06_r", "AU12_r"]].to_numpy(dtype=float)
    assert ((values >= 0) & (values <= 5)).all()
    image = tmp_path / "astronaut.png"
    import cv2

    cv2.imwrite(str(image), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert (
        main(
            [
                "detect",
                str(image),
                "--checkpoint",
                str(both_checkpoint),
                "--out",
                str(tmp_path / "of"),
                "--format",
                "openface",
                "--plot",
            ]
        )
        == 0
    )
    header = pd.read_csv(tmp_path / "of" / "images.csv").columns.tolist()
    assert header[header.index("AU01_r") :] == [
        "AU01_r",
        "AU06_r",
        "AU12_r",
        "AU01_c",
        "AU06_c",
        "AU12_c",
        "AU01",
        "AU06",
        "AU12",
    ]
    assert (tmp_path / "of" / "plots" / "astronaut_face0.png").is_file()


def test_intensity_time_series_plot(tmp_path):
    from auformer.viz import plot_au_timeseries

    table = pd.DataFrame(
        {
            "time_s": [0.0, 0.1, 0.2],
            "face": [0, 0, None],
            "AU12": [0.2, 0.8, None],
            "AU12_c": [0, 1, None],
            "AU12_r": [0.5, 3.0, None],
        }
    )
    assert plot_au_timeseries(table, tmp_path / "series.png", 0.5).is_file()
    assert plot_au_timeseries(table.drop(columns=["AU12", "AU12_c"]), tmp_path / "only_r.png", 0.5).is_file()


@pytest.mark.slow
@pytest.mark.parametrize("format", ["onnx", "torchscript"])
@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_export_carries_both_heads(both_checkpoint, tmp_path, format):
    path = export_model(both_checkpoint, tmp_path, format)
    description = json.loads(path.with_name(path.name + ".json").read_text())
    assert [o["name"] for o in description["outputs"]] == ["probabilities", "intensity"]
    assert description["outputs"][1]["columns"] == ["AU01_r", "AU06_r", "AU12_r"]
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    model = auformer.load_checkpoint(both_checkpoint)
    with torch.no_grad():
        output = model(images)
    if format == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        probabilities, intensity = session.run(["probabilities", "intensity"], {"images": images.numpy()})
    else:
        with torch.no_grad():
            probabilities, intensity = (t.numpy() for t in torch.jit.load(str(path))(images))
    np.testing.assert_allclose(probabilities, torch.sigmoid(output.logits).numpy(), atol=1e-4)
    np.testing.assert_allclose(intensity, output.intensity.numpy(), atol=5e-4)


def test_fold_mean_of_intensity_scores_and_cv_table():
    def run(icc: float | None, known: int) -> dict:
        per_au = {"AU12": {"icc": icc, "pearson": 0.5, "mae": 1.0, "known": known}}
        return {
            "intensity": {"mean_icc": icc, "mean_pearson": 0.5, "mean_mae": 1.0, "per_au": per_au},
            "backbone_weights": "random",
        }

    mean = outputs.mean_metrics([run(0.6, 3), run(None, 0), run(0.8, 5)])  # an undefined fold is left out
    assert mean["intensity"]["mean_icc"] == pytest.approx(0.7)
    assert mean["intensity"]["per_au"]["AU12"] == {"icc": pytest.approx(0.7), "pearson": 0.5, "mae": 1.0, "known": 8}
    table = outputs.cv_table_markdown({"fold0": run(0.6, 3), "fold1": run(None, 0), "mean": mean})
    assert "| **ICC(3,1)** | 0.600 | n/a | 0.700 |" in table
