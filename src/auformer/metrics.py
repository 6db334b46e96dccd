"""Per-AU detection metrics: F1 of the positive class and friends, as the AU literature reports them.

Counts (TP/FP/FN) are accumulated over all rows of an evaluation set per AU (ME-GraphAU
style), then F1 is computed once per AU and averaged over AUs. Unknown labels (``-1``
or NaN, i.e. ``mask = labels >= 0``) are excluded AU by AU.

Undefined F1: an AU with no positive label and no positive prediction has F1 = 0/0.
It is reported as ``f1 = 0.0`` with ``"undefined": True`` and counts as 0 in
``mean_f1`` (what ME-GraphAU's F1 code and scikit-learn's ``zero_division=0`` give, so
numbers stay comparable with the literature); ``undefined_aus`` lists such AUs so a
table can mark them. An AU with no known label at all is undefined as well, with
every score 0.0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import expit
from sklearn.metrics import precision_recall_fscore_support

from auformer.aus import au_column, au_name


def au_metrics(
    probs: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    aus: list[int] | None = None,
    threshold: float | Sequence[float] = 0.5,
    from_logits: bool = False,
) -> dict:
    """Per-AU F1, precision, recall, accuracy and mean F1 of predictions ``probs >= threshold``.

    probs: (M, N) probabilities in [0, 1], or logits with ``from_logits=True``.
    labels: (M, N) with 1 (present), 0 (absent), -1 or NaN (unknown, excluded).
    aus: the N FACS numbers, naming the per-AU keys ``AU01``...; None keys them "0", "1", ...
    threshold: one threshold or one per AU (on probabilities).
    Returns ``{"mean_f1", "undefined_aus", "per_au": {key: {"f1", "precision", "recall",
    "accuracy", "support", "predicted_positive", "known", "undefined"}}}``; support counts
    known positive labels, known counts known labels.
    """
    probs_np, labels_np = _as_float_array(probs, "probs"), _as_float_array(labels, "labels")
    if probs_np.shape != labels_np.shape:
        raise ValueError(f"probs and labels must have the same shape (M, N), got {probs_np.shape} and {labels_np.shape}")
    num_aus = probs_np.shape[1]
    if np.isnan(probs_np).any():
        raise ValueError("probs contain NaN")
    if from_logits:
        probs_np = expit(probs_np)
    elif probs_np.size and (probs_np.min() < 0 or probs_np.max() > 1):
        raise ValueError("probs must lie in [0, 1]; pass from_logits=True for raw logits")
    known = labels_np >= 0  # NaN >= 0 is False: unknown
    if not np.isin(labels_np[known], (0.0, 1.0)).all():
        raise ValueError("labels must be 1 (present), 0 (absent), or -1/NaN (unknown)")
    keys = _au_keys(aus, num_aus)
    thresholds = np.asarray(threshold, dtype=np.float64)
    if thresholds.ndim == 0:
        thresholds = np.full(num_aus, thresholds)
    if thresholds.shape != (num_aus,) or not ((thresholds >= 0) & (thresholds <= 1)).all():
        raise ValueError(f"threshold must be one value or {num_aus} values (one per AU) in [0, 1], got {threshold!r}")
    predicted = probs_np >= thresholds  # (M, N)

    per_au = {}
    for column, key in enumerate(keys):
        rows = known[:, column]
        truth = labels_np[rows, column].astype(int)
        guess = predicted[rows, column].astype(int)
        # scikit-learn refuses empty input: an AU with no known label scores 0 (and is undefined).
        precision, recall, f1, _ = (
            precision_recall_fscore_support(truth, guess, average="binary", labels=[0, 1], zero_division=0.0)
            if truth.size
            else (0.0, 0.0, 0.0, None)
        )
        support, predicted_positive = int(truth.sum()), int(guess.sum())
        per_au[key] = {
            "f1": float(f1),
            "precision": float(precision),
            "recall": float(recall),
            "accuracy": float((truth == guess).mean()) if truth.size else 0.0,
            "support": support,
            "predicted_positive": predicted_positive,
            "known": int(truth.size),
            "undefined": support == 0 and predicted_positive == 0,
        }
    no_positive = [key for key, scores in per_au.items() if scores["support"] == 0]
    if no_positive:  # a fold without positives cannot measure detection of that AU: say so, never silently
        warnings.warn(
            f"no positive label for {', '.join(no_positive)} in this evaluation set: their F1 says nothing "
            "about detecting them (marked undefined unless something was predicted present)",
            stacklevel=2,
        )
    mean_f1 = float(np.mean([scores["f1"] for scores in per_au.values()])) if per_au else 0.0
    undefined = [key for key, scores in per_au.items() if scores["undefined"]]
    return {"mean_f1": mean_f1, "undefined_aus": undefined, "per_au": per_au}


THRESHOLD_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)  # (99,) the candidates of `search_thresholds`


def search_thresholds(probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor, default: float = 0.5) -> np.ndarray:
    """(N,) thresholds, one per AU: the value of `THRESHOLD_GRID` with the best F1 of ``probs >= t``.

    The ABAW entries' recipe: call it on a validation split, never on the test split the
    thresholds are then scored on. Ties go to the value nearest ``default`` (a flat F1 leaves
    the threshold where it was); an AU without a known positive keeps ``default``.
    Counted from sorted scores, one ``searchsorted`` per AU, rather than `au_metrics` per
    candidate (99 passes over a 400k-frame Aff-Wild2 validation split); the counts are
    `au_metrics`' own (tests compare the two).
    """
    probs_np, labels_np = _as_float_array(probs, "probs"), _as_float_array(labels, "labels")
    if probs_np.shape != labels_np.shape:
        raise ValueError(f"probs and labels must have the same shape (M, N), got {probs_np.shape} and {labels_np.shape}")
    chosen = np.full(probs_np.shape[1], float(default))
    for column in range(probs_np.shape[1]):
        known = labels_np[:, column] >= 0  # NaN or -1: unknown
        present = labels_np[known, column] == 1
        scores = probs_np[known, column]
        positives, negatives = np.sort(scores[present]), np.sort(scores[~present])
        if positives.size == 0:
            continue
        true_positive = positives.size - np.searchsorted(positives, THRESHOLD_GRID, side="left")  # (G,) scores >= t
        false_positive = negatives.size - np.searchsorted(negatives, THRESHOLD_GRID, side="left")  # (G,)
        f1 = 2 * true_positive / (true_positive + false_positive + positives.size)  # 2TP / (2TP + FP + FN)
        best = THRESHOLD_GRID[f1 == f1.max()]
        chosen[column] = best[np.argmin(np.abs(best - default))]
    return chosen


def _varies(values: np.ndarray) -> bool:
    """Whether ``values`` holds two different numbers (exact, where a std of equal floats can be 1e-17)."""
    return values.size >= 2 and bool(np.ptp(values) > 0)


def icc_3_1(pred: np.ndarray, target: np.ndarray) -> float:
    """ICC(3,1) (Shrout & Fleiss 1979): two-way mixed, consistency, single rater; NaN where undefined.

    The two "raters" are the model and the annotation, the ``M`` "targets" the frames:
    ``(MS_rows - MS_error) / (MS_rows + (k - 1) MS_error)`` from the two-way ANOVA of the
    ``(M, k)`` table. With k = 2 and the table's columns centred, ``MS_rows - MS_error`` is
    ``2 cov`` and ``MS_rows + MS_error`` is ``var_pred + var_target``, the form computed here:
    it takes no difference of large sums of squares, and a constant column contributes exact
    zeros (the ANOVA sums left rounding residue there: two different constants scored +-1).
    Consequences: a constant prediction against varying targets scores 0 (no consistency,
    like chance), and so do varying predictions against constant targets; both constant
    (0/0) or fewer than 2 frames is undefined: NaN. Written out here: it is a few lines of
    numpy, and the statistics packages that have it (pingouin) pull in far more than it needs.
    """
    varies = np.array([_varies(pred), _varies(target)])  # (2,) per rater
    if not varies.any():
        return float("nan")
    table = np.stack([pred, target], axis=1).astype(np.float64)  # (M, 2)
    x, y = np.where(varies, table - table.mean(axis=0), 0.0).T  # (M,) each; a constant's mean can miss it by an ulp
    return float(2 * (x * y).sum() / ((x * x).sum() + (y * y).sum()))


def intensity_metrics(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor, aus: list[int] | None = None) -> dict:
    """Per-AU ICC(3,1), Pearson r and MAE of intensities, averaged over AUs (the intensity literature's table).

    pred: (M, N) predicted intensities (0-5). target: (M, N) annotated intensities, -1 or
    NaN = unknown (excluded AU by AU). Returns ``{"mean_icc", "mean_pearson", "mean_mae",
    "per_au": {"AU12": {"icc", "pearson", "mae", "known"}}}`` (keys as in `au_metrics`).
    An AU with no known target (e.g. a BP4D AU that FERA 2015 did not code for intensity)
    has NaN scores, ``known = 0``, and is left out of the means. Pearson r is undefined
    (NaN) when the predictions or the targets are constant; ICC(3,1) only when both are
    (see `icc_3_1`: a constant prediction has ICC 0). An undefined score counts as 0 in its
    mean, as an undefined F1 does in `au_metrics`; tables show it as "n/a".
    """
    pred_np, target_np = _as_float_array(pred, "pred"), _as_float_array(target, "target")
    if pred_np.shape != target_np.shape:
        raise ValueError(f"pred and target must have the same shape (M, N), got {pred_np.shape} and {target_np.shape}")
    if np.isnan(pred_np).any():
        raise ValueError("pred contains NaN")
    per_au = {}
    for column, key in enumerate(_au_keys(aus, pred_np.shape[1])):
        rows = target_np[:, column] >= 0  # NaN >= 0 is False: unknown
        guess, truth = pred_np[rows, column], target_np[rows, column]
        per_au[key] = {
            "icc": icc_3_1(guess, truth),
            "pearson": float(np.corrcoef(guess, truth)[0, 1]) if _varies(guess) and _varies(truth) else float("nan"),
            "mae": float(np.abs(guess - truth).mean()) if truth.size else float("nan"),
            "known": int(truth.size),
        }
    scored = [scores for scores in per_au.values() if scores["known"]]

    def mean(name: str) -> float:
        return float(np.mean([np.nan_to_num(scores[name]) for scores in scored])) if scored else float("nan")

    return {"mean_icc": mean("icc"), "mean_pearson": mean("pearson"), "mean_mae": mean("mae"), "per_au": per_au}


def intensity_table_markdown(metrics: dict) -> str:
    """A Markdown table of per-AU ICC(3,1), Pearson r and MAE with a mean row; undefined scores (NaN) are "n/a"."""

    def cell(value: float, bold: str = "") -> str:
        return "n/a" if np.isnan(value) else f"{bold}{value:.3f}{bold}"

    lines = ["| AU | Name | ICC(3,1) | Pearson r | MAE | Known |", "|---|---|---:|---:|---:|---:|"]
    for key, scores in metrics["per_au"].items():
        name = au_name(key) if key.startswith("AU") else ""
        values = " | ".join(cell(scores[n]) for n in ("icc", "pearson", "mae"))
        lines.append(f"| {key} | {name} | {values} | {scores['known']} |")
    means = " | ".join(cell(metrics[n], "**") for n in ("mean_icc", "mean_pearson", "mean_mae"))
    lines.append(f"| **Mean** | | {means} | |")
    return "\n".join(lines) + "\n"


def metrics_table_markdown(metrics: dict) -> str:
    """A Markdown table of per-AU F1/precision/recall (percent, one decimal) and support, with a mean row."""
    lines = ["| AU | Name | F1 (%) | Precision (%) | Recall (%) | Support |", "|---|---|---:|---:|---:|---:|"]
    for key, scores in metrics["per_au"].items():
        f1 = f"{100 * scores['f1']:.1f}" + ("*" if scores["undefined"] else "")
        name = au_name(key) if key.startswith("AU") else ""
        precision, recall = 100 * scores["precision"], 100 * scores["recall"]
        lines.append(f"| {key} | {name} | {f1} | {precision:.1f} | {recall:.1f} | {scores['support']} |")
    lines.append(f"| **Mean** | | **{100 * metrics['mean_f1']:.1f}** | | | |")
    if metrics["undefined_aus"]:
        lines.append("")
        lines.append("\\* no positive label and no positive prediction: F1 undefined, counted as 0 in the mean.")
    return "\n".join(lines) + "\n"


def _au_keys(aus: list[int] | None, num_aus: int) -> list[str]:
    """Per-AU dictionary keys: AU column names, or column indices as strings."""
    if aus is None:
        return [str(column) for column in range(num_aus)]
    if len(aus) != num_aus:
        raise ValueError(f"aus lists {len(aus)} AUs but probs have {num_aus} columns")
    return [au_column(au) for au in aus]


def _as_float_array(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """numpy float64 copy of an array or tensor (any device, with or without grad)."""
    if isinstance(values, torch.Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must have shape (M, N), got {array.shape}")
    return array
