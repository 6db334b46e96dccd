"""Per-AU metrics against hand counts and scikit-learn, with masks, per-AU thresholds and undefined AUs."""

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from auformer.metrics import au_metrics, metrics_table_markdown


def test_hand_counts():
    probs = np.array([[0.9, 0.2], [0.6, 0.7], [0.4, 0.1], [0.8, 0.5], [0.3, 0.9]])
    labels = np.array([[1, 0], [0, 1], [1, -1], [1, 0], [-1, 1]])
    metrics = au_metrics(probs, labels, aus=[1, 12])
    au1, au12 = metrics["per_au"]["AU01"], metrics["per_au"]["AU12"]
    # AU1, known rows 0-3: predictions 1,1,0,1 vs labels 1,0,1,1 -> TP 2, FP 1, FN 1, TN 0
    assert au1["precision"] == pytest.approx(2 / 3) and au1["recall"] == pytest.approx(2 / 3)
    assert au1["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1)) and au1["accuracy"] == pytest.approx(2 / 4)
    assert (au1["support"], au1["predicted_positive"], au1["known"]) == (3, 3, 4)
    # AU12, known rows 0,1,3,4: predictions 0,1,1 (0.5 >= 0.5),1 vs labels 0,1,0,1 -> TP 2, FP 1, FN 0
    assert au12["f1"] == pytest.approx(4 / 5) and au12["recall"] == 1.0 and au12["accuracy"] == pytest.approx(3 / 4)
    assert metrics["mean_f1"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert metrics["undefined_aus"] == [] and not au1["undefined"]


def test_matches_sklearn_with_masks_and_per_au_thresholds():
    rng = np.random.default_rng(7)
    num_rows, num_aus = 300, 6
    probs = rng.random((num_rows, num_aus))
    labels = (rng.random((num_rows, num_aus)) < np.linspace(0.05, 0.6, num_aus)).astype(np.float32)
    labels[rng.random((num_rows, num_aus)) < 0.2] = -1.0
    labels[:5, 0] = np.nan  # NaN is unknown too
    thresholds = [0.3, 0.4, 0.5, 0.6, 0.7, 0.5]
    metrics = au_metrics(torch.from_numpy(probs), torch.from_numpy(labels), threshold=thresholds)
    f1s = []
    for column, key in enumerate(map(str, range(num_aus))):
        known = labels[:, column] >= 0
        truth, guess = labels[known, column], probs[known, column] >= thresholds[column]
        scores = metrics["per_au"][key]
        assert scores["f1"] == pytest.approx(f1_score(truth, guess))
        assert scores["precision"] == pytest.approx(precision_score(truth, guess))
        assert scores["recall"] == pytest.approx(recall_score(truth, guess))
        assert scores["accuracy"] == pytest.approx(accuracy_score(truth, guess))
        assert scores["known"] == known.sum() and scores["support"] == truth.sum()
        f1s.append(f1_score(truth, guess))
    assert metrics["mean_f1"] == pytest.approx(np.mean(f1s))


def test_logits_flag_and_tensor_input_agree_with_probabilities():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(50, 3)) * 3
    labels = (rng.random((50, 3)) > 0.5).astype(np.float64)
    from_probs = au_metrics(1 / (1 + np.exp(-logits)), labels, aus=[1, 2, 4])
    logits_tensor = torch.tensor(logits, requires_grad=True)
    from_logits = au_metrics(logits_tensor, torch.tensor(labels), aus=[1, 2, 4], from_logits=True)
    assert from_logits == from_probs


def test_undefined_au_reported_not_crashing():
    probs = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.9], [0.8, 0.2, 0.1]])
    labels = np.array([[1, 0, -1], [0, 0, -1], [1, 0, -1]])
    metrics = au_metrics(probs, labels, aus=[1, 2, 4])
    assert metrics["undefined_aus"] == ["AU02", "AU04"]  # AU02: no positives at all; AU04: no known label
    assert metrics["per_au"]["AU02"]["f1"] == 0.0 and metrics["per_au"]["AU02"]["accuracy"] == 1.0
    assert metrics["per_au"]["AU04"]["known"] == 0 and metrics["per_au"]["AU04"]["f1"] == 0.0
    assert metrics["mean_f1"] == pytest.approx(1 / 3)  # undefined AUs count as 0
    # a false positive makes F1 defined (and 0): precision 0, recall undefined -> 0
    labels[1, 1], probs[1, 1] = 0, 0.9
    assert not au_metrics(probs, labels, aus=[1, 2, 4])["per_au"]["AU02"]["undefined"]


def test_table_markdown():
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2]])
    labels = np.array([[1, 0], [1, 0], [1, 0]])
    table = metrics_table_markdown(au_metrics(probs, labels, aus=[1, 12]))
    lines = table.splitlines()
    assert lines[0].startswith("| AU | Name | F1 (%)")
    assert lines[2] == "| AU01 | Inner Brow Raiser | 80.0 | 100.0 | 66.7 | 3 |"  # P 1, R 2/3, F1 0.8
    assert lines[3] == "| AU12 | Lip Corner Puller | 0.0* | 0.0 | 0.0 | 0 |"
    assert lines[4] == "| **Mean** | | **40.0** | | | |"
    assert "F1 undefined" in table


@pytest.mark.parametrize(
    "probs, labels, kwargs, message",
    [
        (np.full((2, 2), 0.5), np.zeros((2, 3)), {}, r"shape \(M, N\)"),
        (np.full((2, 2), 1.5), np.zeros((2, 2)), {}, "from_logits=True"),
        (np.full((2, 2), np.nan), np.zeros((2, 2)), {}, "NaN"),
        (np.full((2, 2), 0.5), np.full((2, 2), 2.0), {}, "labels must be 1"),
        (np.full((2, 2), 0.5), np.zeros((2, 2)), {"threshold": [0.5]}, "threshold"),
        (np.full((2, 2), 0.5), np.zeros((2, 2)), {"aus": [1]}, "aus lists 1"),
        (np.full(2, 0.5), np.zeros(2), {}, r"shape \(M, N\)"),
    ],
)
def test_bad_input_raises(probs, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        au_metrics(probs, labels, **kwargs)
