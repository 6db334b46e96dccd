"""A run's outputs: metrics.json, per-AU tables (CSV, Markdown), predictions.csv, the cross-run table, skipped.json.

Written by the `Trainer`, ``auformer evaluate`` and the protocols (cross-validation, data
efficiency); the schema of ``metrics.json`` is the same for one run and for a mean over runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from auformer.aus import au_columns
from auformer.data import AUTable
from auformer.files import atomic_path, atomic_write_text
from auformer.metrics import intensity_table_markdown, metrics_table_markdown

METRIC_KEYS = ("f1", "precision", "recall", "support")  # per-AU fields of metrics.json


def metrics_json(metrics: dict[str, Any], backbone_weights: str) -> dict[str, Any]:
    """``metrics.json`` content from `evaluate_model` metrics: ``{"mean_f1", "per_au": {"AU01": {f1, precision,
    recall, support}}}`` for occurrence, ``"intensity": intensity_metrics(...)`` for intensity (NaN written as null),
    and ``"backbone_weights"`` (hub, synthetic, random or the file): what the scores stand on; ``random`` means
    the adapters sat on a random frozen ViT."""
    result = {}
    if "mean_f1" in metrics:
        result = _f1_json(metrics)
    if "tuned" in metrics:  # per-AU thresholds picked on the validation split (train.threshold_search)
        result["tuned"] = {"thresholds": metrics["tuned"]["thresholds"], **_f1_json(metrics["tuned"])}
    if "intensity" in metrics:
        result["intensity"] = _nan_to_none(metrics["intensity"])
    result["backbone_weights"] = backbone_weights
    return result


def _f1_json(metrics: dict[str, Any]) -> dict[str, Any]:
    per_au = {au: {key: values[key] for key in METRIC_KEYS} for au, values in metrics["per_au"].items()}
    return {"mean_f1": float(metrics["mean_f1"]), "per_au": per_au}


def _nan_to_none(value: Any) -> Any:
    """NaN -> None, recursively (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def main_score(metrics: dict[str, Any]) -> float:
    """The number that picks the best checkpoint and heads the log: mean F1, or mean ICC for intensity-only models."""
    return metrics["mean_f1"] if "mean_f1" in metrics else float(np.nan_to_num(metrics["intensity"]["mean_icc"], nan=-1.0))


def results_text(metrics: dict[str, Any]) -> str:
    """The tables printed after a run: per-AU F1 and/or per-AU ICC, r, MAE."""
    parts = []
    if "mean_f1" in metrics:
        parts.append(f"{metrics_table_markdown(metrics)}\nmean F1 {metrics['mean_f1']:.3f}")
    if "tuned" in metrics:
        parts.append(tuned_table_markdown(metrics))
    if "intensity" in metrics:
        scores = metrics["intensity"]
        parts.append(
            f"{intensity_table_markdown(scores)}\nintensity: mean ICC(3,1) {scores['mean_icc']:.3f}, "
            f"mean Pearson r {scores['mean_pearson']:.3f}, mean MAE {scores['mean_mae']:.3f}"
        )
    return "\n\n".join(parts)


def tuned_table_markdown(metrics: dict[str, Any]) -> str:
    """Per-AU F1 at the one threshold (train.threshold) beside F1 at the thresholds tuned on the validation split."""
    tuned = metrics["tuned"]
    lines = ["| AU | tuned threshold | F1 (one threshold) | F1 (tuned) |", "|---|---|---|---|"]
    for au, scores in metrics["per_au"].items():
        lines.append(
            f"| {au} | {tuned['thresholds'][au]:.2f} | {100 * scores['f1']:.1f} | {100 * tuned['per_au'][au]['f1']:.1f} |"
        )
    lines.append(f"| **Avg** | | **{100 * metrics['mean_f1']:.1f}** | **{100 * tuned['mean_f1']:.1f}** |")
    return "\n".join(lines) + f"\nmean F1 at the thresholds tuned on the validation split {tuned['mean_f1']:.3f}"


def write_results(
    out_dir: Path, metrics: dict[str, Any], table: AUTable, predictions: dict[str, np.ndarray], backbone_weights: str
) -> None:
    """metrics.json, per_au.csv/.md (occurrence), per_au_intensity.csv/.md (intensity) and predictions.csv.

    predictions.csv holds the raw probabilities (``AU01_prob``) beside the labels
    (``AU01_label``, -1 unknown) so results can be re-scored at other thresholds, and for
    intensity models the predicted (``AU01_int_pred``) and annotated (``AU01_int_label``, -1 unknown)
    intensities. Every column says what it holds: a bare ``AU01`` is a label in manifest.csv
    and a probability in a detect CSV, so predictions.csv, which has both, names neither so.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics_json(metrics, backbone_weights), indent=2) + "\n")
    for name, scores, markdown in (
        ("per_au", metrics, metrics_table_markdown),
        ("per_au_intensity", metrics.get("intensity"), intensity_table_markdown),
    ):
        if scores is not None and "per_au" in scores:
            per_au = pd.DataFrame.from_dict(scores["per_au"], orient="index").rename_axis("au").reset_index()
            atomic_write_text(out_dir / f"{name}.csv", per_au.to_csv(index=False))
            atomic_write_text(out_dir / f"{name}.md", markdown(scores))
    columns = au_columns(table.aus)
    frame = pd.DataFrame({"image": table.images, "subject": table.subjects})
    if "probs" in predictions:
        frame[[f"{c}_prob" for c in columns]] = predictions["probs"]
    frame[[f"{c}_label" for c in columns]] = table.labels.astype(int)
    if "intensity" in predictions:
        frame[[f"{c}_int_pred" for c in columns]] = predictions["intensity"]
        frame[[f"{c}_int_label" for c in columns]] = table.intensity if table.intensity is not None else -1.0
    with atomic_path(out_dir / "predictions.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over folds of each per-AU score (supports and known counts summed), same schema as one run."""
    result = {}
    if "mean_f1" in runs[0]:
        result = _mean_f1(runs)
    if "tuned" in runs[0]:  # each fold's thresholds stay in its own metrics.json (runs.json)
        result["tuned"] = _mean_f1([run["tuned"] for run in runs])
    if "intensity" in runs[0]:
        folds = [run["intensity"] for run in runs]

        def mean(values: list[float | None]) -> float | None:  # folds where a score is undefined (null) are left out
            known = [v for v in values if v is not None]
            return float(np.mean(known)) if known else None

        per_au = {
            au: {key: mean([fold["per_au"][au][key] for fold in folds]) for key in ("icc", "pearson", "mae")}
            for au in folds[0]["per_au"]
        }
        for au in per_au:
            per_au[au]["known"] = int(sum(fold["per_au"][au]["known"] for fold in folds))
        result["intensity"] = {
            **{key: mean([fold[key] for fold in folds]) for key in ("mean_icc", "mean_pearson", "mean_mae")},
            "per_au": per_au,
        }
    result["backbone_weights"] = runs[0]["backbone_weights"]
    return result


def _mean_f1(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over runs of mean F1 and each per-AU score; supports summed."""
    per_au = {}
    for au in runs[0]["per_au"]:
        rows = [run["per_au"][au] for run in runs]
        per_au[au] = {key: float(np.mean([row[key] for row in rows])) for key in METRIC_KEYS[:3]}
        per_au[au]["support"] = int(sum(row["support"] for row in rows))
    return {"mean_f1": float(np.mean([run["mean_f1"] for run in runs])), "per_au": per_au}


def cv_table_markdown(runs: dict[str, dict[str, Any]]) -> str:
    """Per-AU F1 (%) of each run (fold, rate...) and their mean, as a Markdown table; with intensity
    heads, rows of mean ICC(3,1), Pearson r and MAE follow (per-AU intensity scores are in each run's files)."""
    names = list(runs)
    first = runs[names[0]]
    lines = ["| AU | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for au in first.get("per_au", {}):
        lines.append(f"| {au} | " + " | ".join(f"{100 * runs[n]['per_au'][au]['f1']:.1f}" for n in names) + " |")
    if "mean_f1" in first:
        lines.append("| **Avg** | " + " | ".join(f"**{100 * runs[n]['mean_f1']:.1f}**" for n in names) + " |")
    if "tuned" in first:
        lines.append(
            "| **Avg, tuned thresholds** | " + " | ".join(f"**{100 * runs[n]['tuned']['mean_f1']:.1f}**" for n in names) + " |"
        )
    if "intensity" in first:
        for key, label in (("mean_icc", "ICC(3,1)"), ("mean_pearson", "Pearson r"), ("mean_mae", "MAE")):
            values = (runs[n]["intensity"][key] for n in names)
            lines.append(f"| **{label}** | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def report_skipped(out_dir: Path, skipped: list[str], is_main: bool) -> list[str]:
    """Write ``out_dir/skipped.json`` (count and one line per bad image, ``data.skip_bad``); returns ``skipped``.

    Nothing is printed here: `skipped_text` is shown once, at the end of the run.
    """
    if skipped and is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "skipped.json", json.dumps({"count": len(skipped), "skipped": skipped}, indent=2) + "\n")
    return skipped


def skipped_text(out_dir: Path, skipped: list[str]) -> str:
    """What a run prints about the bad images ``data.skip_bad`` dropped: one ``skipped:`` line each, then the count."""
    lines = [f"skipped: {line}" for line in skipped]
    lines.append(f"{len(skipped)} bad images skipped (listed in {out_dir / 'skipped.json'})")
    return "\n".join(lines)
