"""Plots of detection results: one face with its AU bars, AU time series of a video, boxed faces.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot state), so
plotting works headless and from worker threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from auformer.aus import au_label
from auformer.files import atomic_path

OCCURS_COLOR = "#d1495b"  # probability at or above the AU's threshold
ABSENT_COLOR = "#8d99ae"
BOX_COLOR = (255, 200, 0)  # RGB: face boxes drawn on photos, visible on skin and most backgrounds


def _thresholds(columns: list[str], threshold: float | Mapping[str, float]) -> list[float]:
    if isinstance(threshold, Mapping):
        return [float(threshold[column]) for column in columns]
    return [float(threshold)] * len(columns)


def _save(figure: Figure, out_path: str | os.PathLike) -> Path:
    """Save atomically, so an interrupted run leaves no half PNG."""
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, dpi=150)
    return out_path


def plot_face_aus(aligned_crop: np.ndarray, probs: Mapping[str, float], threshold: float | Mapping[str, float],
                  out_path: str | os.PathLike, title: str | None = None) -> Path:
    """The aligned face beside a horizontal bar per AU (FACS name, probability, threshold tick).

    ``probs`` maps ``AU01``-style names to probabilities; bars at or above their
    threshold are red, the others grey. ``title`` (e.g. the input file) goes on top.
    Returns the written path.
    """
    columns = list(probs)
    values = np.array([probs[column] for column in columns], dtype=float)
    thresholds = _thresholds(columns, threshold)
    figure = Figure(figsize=(10, max(4.0, 0.42 * len(columns) + 1.2)), layout="constrained")
    face_axes, bar_axes = figure.subplots(1, 2, width_ratios=[1, 1.5])
    if title:
        figure.suptitle(title, fontsize=11)
    face_axes.imshow(aligned_crop)
    face_axes.set_axis_off()
    face_axes.set_title("aligned face")
    positions = np.arange(len(columns))
    colors = [OCCURS_COLOR if value >= limit else ABSENT_COLOR for value, limit in zip(values, thresholds)]
    bar_axes.barh(positions, values, color=colors, height=0.7)
    bar_axes.scatter(thresholds, positions, marker="|", s=400, color="black", linewidths=1.5)
    for position, value in zip(positions, values):  # a column of numbers right of the bars, clear of the ticks
        weight = "bold" if value >= thresholds[position] else "normal"
        bar_axes.text(1.03, position, f"{value:.2f}", va="center", fontsize=10, fontweight=weight)
    bar_axes.set_yticks(positions, [au_label(column) for column in columns], fontsize=10)
    bar_axes.invert_yaxis()  # first AU on top
    bar_axes.set_xlim(0, 1.1)
    bar_axes.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    bar_axes.set_xlabel("probability  (black tick: threshold)")
    bar_axes.spines[["top", "right"]].set_visible(False)
    bar_axes.set_title(f"{int(sum(value >= limit for value, limit in zip(values, thresholds)))} of {len(columns)} AUs present")
    return _save(figure, out_path)


def plot_au_timeseries(df: pd.DataFrame, out_path: str | os.PathLike, threshold: float | Mapping[str, float]) -> Path:
    """One small panel per AU: probability over time, occurrence (at or above threshold) shaded.

    ``df`` is a detection table (``auformer`` or ``openface`` columns). Only the best
    face of each frame (``face`` 0) is drawn; frames without a face leave gaps.
    """
    time_column = "time_s" if "time_s" in df else "timestamp"
    face_column = "face" if "face" in df else "face_id"
    columns = [column for column in df.columns if column.startswith("AU") and not column.endswith("_c")]
    if not columns:
        raise ValueError(f"{out_path}: the table has no AU probability columns")
    frames = df[(df[face_column] == 0) | df[face_column].isna()].drop_duplicates(time_column).sort_values(time_column)
    times = frames[time_column].to_numpy(dtype=float)
    no_face = frames[columns[0]].isna().to_numpy()
    thresholds = _thresholds(columns, threshold)
    figure = Figure(figsize=(10, 0.75 * len(columns) + 1.0), layout="constrained")
    axes_list = np.atleast_1d(figure.subplots(len(columns), 1, sharex=True))
    for axes, column, limit in zip(axes_list, columns, thresholds):
        values = frames[column].to_numpy(dtype=float)
        axes.fill_between(times, 0, 1, where=values >= limit, color=OCCURS_COLOR, alpha=0.2, linewidth=0, step="mid")
        axes.fill_between(times, 0, 1, where=no_face, color=ABSENT_COLOR, alpha=0.25, linewidth=0, step="mid", hatch="//")
        axes.plot(times, values, color=OCCURS_COLOR, linewidth=1.2)
        axes.axhline(limit, color="black", linewidth=0.6, linestyle=":")
        axes.set_ylim(0, 1)
        axes.set_yticks([0, 1])
        axes.set_ylabel(au_label(column), rotation=0, ha="right", va="center", fontsize=9)
        axes.spines[["top", "right"]].set_visible(False)
    axes_list[-1].set_xlabel("time (s)")
    axes_list[-1].set_xlim(times.min(), max(times.max(), times.min() + 1e-3))
    axes_list[0].set_title("AU probability of the best face per frame (red: present; grey hatched: no face; dotted: threshold)", fontsize=10)
    return _save(figure, out_path)


def draw_face_boxes(image: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """A copy of the (H, W, 3) uint8 RGB ``image`` with every face of a detection table boxed.

    Each ``success=1`` row's box (``x, y, w, h``) is drawn and labelled ``face K`` with
    the row's ``face`` number, so the picture matches the table and the per-face plots.
    """
    boxed = image.copy()
    thickness = max(2, round(max(image.shape[:2]) / 250))
    font_scale = max(0.5, max(image.shape[:2]) / 800)
    for _, row in table[table["success"] == 1].iterrows():
        x, y, w, h = (int(round(row[key])) for key in ("x", "y", "w", "h"))
        cv2.rectangle(boxed, (x, y), (x + w, y + h), BOX_COLOR, thickness)
        label_y = y - 2 * thickness if y > 30 * font_scale else y + h + int(30 * font_scale)  # above the box, else below
        cv2.putText(boxed, f"face {row['face']}", (x, label_y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, BOX_COLOR,
                    thickness, cv2.LINE_AA)
    return boxed
