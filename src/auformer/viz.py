"""Plots of detection results: one face with its AU bars, AU time series of a video, boxed faces.

Occurrence probabilities (0-1, with thresholds) and intensities (0-5, ``AU12_r``) get
panels of their own, drawn for whichever the checkpoint predicts.

Figures are built with `matplotlib.figure.Figure` (Agg canvas, no pyplot state), so
plotting works headless and from worker threads.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from auformer.aus import INTENSITY_MAX, au_label
from auformer.files import atomic_path

OCCURS_COLOR = "#d1495b"  # probability at or above the AU's threshold
ABSENT_COLOR = "#8d99ae"
INTENSITY_COLOR = "#2e86ab"
# One colour per face identity in a video's time series (the first two as the single-face plots had them).
FACE_COLORS = (OCCURS_COLOR, INTENSITY_COLOR, "#edae49", "#66a182", "#8e6c8a", "#3d348b")
_PROBABILITY_COLUMN = re.compile(r"^AU\d+$")
_INTENSITY_COLUMN = re.compile(r"^AU\d+_r$")
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


def plot_face_aus(
    aligned_crop: np.ndarray,
    probs: Mapping[str, float],
    threshold: float | Mapping[str, float],
    out_path: str | os.PathLike,
    title: str | None = None,
    intensity: Mapping[str, float] | None = None,
) -> Path:
    """The aligned face beside a horizontal bar per AU (FACS name, probability, threshold tick).

    ``probs`` maps ``AU01``-style names to probabilities; bars at or above their
    threshold are red, the others grey (an empty mapping: no probability panel, for
    intensity-only checkpoints). ``intensity`` (same keys, 0-5) adds a panel of intensity
    bars. ``title`` (e.g. the input file) goes on top. Returns the written path.
    """
    columns = list(probs) or list(intensity or {})
    widths = [1] + [1.5] * bool(probs) + [1.2] * (intensity is not None)
    figure = Figure(figsize=(4 + 6 * (len(widths) - 1), max(4.0, 0.42 * len(columns) + 1.2)), layout="constrained")
    face_axes, *panels = figure.subplots(1, len(widths), width_ratios=widths)
    if title:
        figure.suptitle(title, fontsize=11)
    face_axes.imshow(aligned_crop)
    face_axes.set_axis_off()
    face_axes.set_title("aligned face")
    if probs:
        _probability_bars(
            panels.pop(0), columns, np.array([probs[c] for c in columns], dtype=float), _thresholds(columns, threshold)
        )
    if intensity is not None:
        _intensity_bars(panels.pop(0), columns, np.array([intensity[c] for c in columns], dtype=float))
    return _save(figure, out_path)


def _intensity_bars(bar_axes, columns: list[str], values: np.ndarray) -> None:
    """Horizontal intensity bars on the 0-5 scale, value printed right of each."""
    positions = np.arange(len(columns))
    bar_axes.barh(positions, values, color=INTENSITY_COLOR, height=0.7)
    for position, value in zip(positions, values):
        bar_axes.text(INTENSITY_MAX * 1.03, position, f"{value:.1f}", va="center", fontsize=10)
    bar_axes.set_yticks(positions, [au_label(column) for column in columns], fontsize=10)
    bar_axes.invert_yaxis()
    bar_axes.set_xlim(0, INTENSITY_MAX * 1.12)
    bar_axes.set_xticks(range(6))
    bar_axes.set_xlabel("intensity  (0 absent, 1-5 = FACS A-E)")
    bar_axes.spines[["top", "right"]].set_visible(False)
    bar_axes.set_title("AU intensity")


def _probability_bars(bar_axes, columns: list[str], values: np.ndarray, thresholds: list[float]) -> None:
    """Horizontal probability bars, red at or above the threshold tick, grey below."""
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


def plot_au_timeseries(df: pd.DataFrame, out_path: str | os.PathLike, threshold: float | Mapping[str, float]) -> Path:
    """One small panel per AU: probability over time, occurrence (at or above threshold) shaded;
    then, for checkpoints with intensity, one panel per AU of the 0-5 intensity (``AU12_r``).

    ``df`` is a detection table (``auformer`` or ``openface`` columns). Each face identity
    (``face``, kept while the face is in view) is one line, in one colour across the panels:
    the ``len(FACE_COLORS)`` faces longest in view. A line breaks where its face is out of
    view; frames without any face are hatched.
    """
    return _save(au_timeseries_figure(df, threshold, out_path), out_path)


def au_timeseries_figure(df: pd.DataFrame, threshold: float | Mapping[str, float], name: str | os.PathLike = "") -> Figure:
    """The figure of `plot_au_timeseries` (``name`` for the error message of a table without AU columns)."""
    time_column = "time_s" if "time_s" in df else "timestamp"
    face_column = "face" if "face" in df else "face_id"
    columns = [column for column in df.columns if _PROBABILITY_COLUMN.match(column)]
    intensity_columns = [column for column in df.columns if _INTENSITY_COLUMN.match(column)]
    if not columns and not intensity_columns:
        raise ValueError(f"{name}: the table has no AU probability or intensity columns")
    times = np.sort(df[time_column].unique()).astype(float)  # (T,)
    found = df[df[face_column].notna()]
    frames_in_view = found.groupby(face_column)[time_column].nunique()
    longest = sorted(frames_in_view.index, key=lambda face_id: (-frames_in_view[face_id], face_id))[: len(FACE_COLORS)]
    lines = {  # face id -> its rows on the full time axis (T rows, NaN where out of view)
        face_id: found[found[face_column] == face_id].drop_duplicates(time_column).set_index(time_column).reindex(times)
        for face_id in sorted(longest)
    }
    no_face = ~np.isin(times, found[time_column].to_numpy(dtype=float))
    thresholds = _thresholds(columns, threshold) + [None] * len(intensity_columns)
    panels = columns + intensity_columns
    figure = Figure(figsize=(10, 0.75 * len(panels) + 1.0), layout="constrained")
    axes_list = np.atleast_1d(figure.subplots(len(panels), 1, sharex=True))
    for axes, column, limit in zip(axes_list, panels, thresholds):
        top = 1.0 if limit is not None else INTENSITY_MAX
        if limit is not None:
            axes.axhline(limit, color="black", linewidth=0.6, linestyle=":")
        for start, end in frame_spans(times, no_face):
            axes.axvspan(start, end, color=ABSENT_COLOR, alpha=0.25, linewidth=0, hatch="//")
        for color, (face_id, rows) in zip(FACE_COLORS, lines.items()):
            values = rows[column].to_numpy(dtype=float)  # (T,)
            if limit is not None:
                axes.fill_between(times, 0, 1, where=values >= limit, color=color, alpha=0.15, linewidth=0, step="mid")
            axes.plot(times, values, color=color, linewidth=1.2, marker=".", markersize=3, label=f"face {face_id:g}")
        axes.set_ylim(0, top)
        axes.set_yticks([0, top])
        label = au_label(column.removesuffix("_r")) + (" intensity" if limit is None else "")
        axes.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
        axes.spines[["top", "right"]].set_visible(False)
    axes_list[-1].set_xlabel("time (s)")
    axes_list[-1].set_xlim(*frame_spans(times, np.ones(len(times), dtype=bool))[0])  # every frame's own time, ends included
    shown = f", the {len(lines)} of {len(frames_in_view)} faces longest in view" if len(lines) < len(frames_in_view) else ""
    intensity = " and intensity 0-5" if intensity_columns else ""  # only what this checkpoint has
    figure.suptitle(
        f"AU probability (shaded: present; dotted: threshold){intensity}\none colour per face{shown}; hatched: no face",
        fontsize=10,
    )
    if lines:
        figure.legend(*axes_list[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8, frameon=False)
    return figure


def frame_spans(times: np.ndarray, mask: np.ndarray) -> list[tuple[float, float]]:
    """(start, end) in seconds of each run of frames where ``mask`` holds; each frame owns the time
    to the midpoints with its neighbours (half the median spacing at the ends), so K such frames
    of a 10 fps video span K / 10 s."""
    if len(times) == 0:
        return []
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.1
    edges = np.concatenate([[times[0] - step / 2], (times[1:] + times[:-1]) / 2, [times[-1] + step / 2]])  # (T + 1,)
    spans, begin = [], None
    for index, flagged in enumerate([*mask, False]):
        if flagged and begin is None:
            begin = index
        elif not flagged and begin is not None:
            spans.append((float(edges[begin]), float(edges[index])))
            begin = None
    return spans


def plot_cost_bubbles(rows: list[dict], out_path: str | os.PathLike, title: str) -> Path:
    """Fig. 1 style: GFLOPs (x) against the paper's F1 (y), bubble area proportional to learnable parameters.

    ``rows``: ``{"method", "learnable_params", "gflops", "paper_f1"}``; methods without a
    paper F1 (the linear probe) are drawn on the x axis at the bottom, marked "no F1".
    """
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.subplots()
    known = [row["paper_f1"] for row in rows if row["paper_f1"] is not None]
    floor = min(known) - 1.5 if known else 0.0
    largest = max(row["learnable_params"] for row in rows)
    for row in rows:
        f1 = row["paper_f1"] if row["paper_f1"] is not None else floor
        size = 30 + 3000 * row["learnable_params"] / largest
        axes.scatter(row["gflops"], f1, s=size, alpha=0.5, edgecolors="black")
        note = "" if row["paper_f1"] is not None else ", no F1"
        axes.annotate(
            f"{row['method']}\n{row['learnable_params'] / 1e6:.2f} M{note}",
            (row["gflops"], f1),
            fontsize=7,
            ha="center",
            va="center",
        )
    axes.set_xlabel("GFLOPs (2 x MACs, batch 1)")
    axes.set_ylabel("paper F1 on BP4D (%)")
    axes.set_title(f"{title}; bubble area ~ learnable parameters", fontsize=9)
    axes.margins(0.2)
    figure.tight_layout()
    return _save(figure, out_path)


def plot_gradcam(face: np.ndarray, maps: np.ndarray, labels: list[str], out_path: str | os.PathLike, title: str) -> Path:
    """Fig. 6 style: the face, then one overlay per map. ``face`` (H, W, 3) uint8, ``maps`` (K, H, W) in [0, 1]."""
    panels = 1 + len(maps)
    figure = Figure(figsize=(max(2.2 * panels, 5.0), 2.6), layout="constrained")  # wide enough for the title
    axes_list = np.atleast_1d(figure.subplots(1, panels))
    axes_list[0].imshow(face)
    axes_list[0].set_title("aligned face" if len(maps) else "no AU predicted present", fontsize=8)
    for axes, cam, label in zip(axes_list[1:], maps, labels):
        axes.imshow(face)
        axes.imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
        axes.set_title(label, fontsize=8)
    for axes in axes_list:
        axes.set_axis_off()
    figure.suptitle(title, fontsize=9)
    return _save(figure, out_path)


def plot_tsne(panels: Mapping[str, np.ndarray], experts: list[str], out_path: str | os.PathLike) -> Path:
    """Fig. 5 style: one scatter per model of t-SNE points ``(M*E, 2)`` (image-major), coloured by expert."""
    from matplotlib import colormaps

    figure = Figure(figsize=(5.2 * len(panels) + 1.4, 5), layout="constrained")
    axes_list = np.atleast_1d(figure.subplots(1, len(panels)))
    colors = colormaps["tab20"](np.linspace(0, 1, max(len(experts), 2)))
    for axes, (title, points) in zip(axes_list, panels.items()):
        expert = np.arange(len(points)) % len(experts)  # row m*E + e belongs to expert e
        for index, name in enumerate(experts):
            chosen = points[expert == index]
            axes.scatter(chosen[:, 0], chosen[:, 1], s=6, color=colors[index], label=name)
        axes.set_title(title, fontsize=9)
        axes.set_xticks([])
        axes.set_yticks([])
    axes_list[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=2, title="expert")
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
        cv2.putText(
            boxed, f"face {row['face']}", (x, label_y), cv2.FONT_HERSHEY_SIMPLEX, font_scale, BOX_COLOR, thickness, cv2.LINE_AA
        )
    return boxed
