"""Your own labelled faces: a folder of photos/videos + a label CSV -> prepared dataset.

``auformer prepare folder INPUT LABELS.csv OUT``. LABELS.csv has one row per labelled
photo or video frame::

    file,frame,subject,AU01,AU12_c,AU25_r
    photos/ann.jpg,,ann,1,0,
    clips/bob.mp4,30,bob,0,1,3

- ``file``: path relative to INPUT and inside it (a photo, or a video with ``frame``); an
  absolute path, a ``..`` out of INPUT or a link out of it is a bad row;
- ``frame``: 0-based frame index in the video (empty or absent for photos);
- ``subject``: identity; folds are subject-exclusive (``--folds K``);
- AU columns in any form ``aus.py`` parses: occurrence ``AU12``, ``12``, ``AU12_c`` with
  values 1/0; intensity ``AU12_r`` / ``AU12_int`` (0-5), turned into occurrence by
  ``intensity >= intensity_threshold``, and kept as ``AU12_int`` manifest columns for
  intensity training (``model.task``, docs/intensity.md). Empty, ``-1`` and ``9`` mean
  unknown (masked).

Faces are found and aligned by the same code as the official-release converters
(``converters/__init__.py``); every file without a face, missing or unreadable, and every
label row that cannot be used (with its line and why), lands in ``prepare_report.json``.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from auformer.aus import au_column, parse_au
from auformer.data.converters import Frame, PrepareReport, Source, run_prepare
from auformer.data.folds import subject_kfold
from auformer.data.images import VIDEO_EXTENSIONS
from auformer.errors import AUFormerError
from auformer.files import resolve, resolve_inside

UNKNOWN = ("", "-1", "9", "nan")  # label values that mean "not coded"
_AU_HEADER = re.compile(r"^(?P<au>.+?)(?:_(?P<kind>c|r|int))?$", re.IGNORECASE)
_RESERVED = ("file", "frame", "subject")


def label_columns(path: Path, columns: list[str]) -> dict[str, tuple[int, str]]:
    """AU column name -> (FACS number, ``"occurrence"`` or ``"intensity"``); one-line error for any other column."""
    lowered = [c.strip().lower() for c in columns]
    for required in ("file", "subject"):
        if required not in lowered:
            raise AUFormerError(
                f"{path}: no {required!r} column (expected file,[frame,]subject,AU01,...; found {','.join(columns)})"
            )
    found: dict[str, tuple[int, str]] = {}
    for column in columns:
        if column.strip().lower() in _RESERVED:
            continue
        match = _AU_HEADER.match(column.strip())
        try:
            au = parse_au(match.group("au"))
        except ValueError as error:
            raise AUFormerError(f"{path}: column {column!r} is neither file, frame, subject nor an AU column: {error}") from None
        if au in {a for a, _ in found.values()}:
            raise AUFormerError(f"{path}: {au_column(au)} appears in two columns")
        found[column] = (au, "intensity" if (match.group("kind") or "").lower() in ("r", "int") else "occurrence")
    if not found:
        raise AUFormerError(f"{path}: no AU columns (expected names like AU01, 12, AU12_c, AU12_r)")
    return found


def _label(value: str, kind: str, threshold: float | None) -> tuple[float, float]:
    """One label as (occurrence 1, 0 or -1 unknown; intensity 0-5 or -1 unknown / not an intensity column);
    ValueError with the reason for anything else."""
    text = value.strip().lower()
    if text in UNKNOWN or text in ("-1.0", "9.0"):
        return -1.0, -1.0
    number = float(text)  # ValueError names the text
    if kind == "occurrence":
        if number not in (0.0, 1.0):
            raise AUFormerError(f"occurrence {value!r} is not 1, 0 or empty/-1/9 (unknown)")
        return number, -1.0
    if not 0 <= number <= 5:
        raise AUFormerError(f"intensity {value!r} is not in 0-5 (or empty/-1/9 for unknown)")
    return float(number >= threshold), number


def read_labels(path: str | Path, intensity_threshold: float | None = None) -> tuple[pd.DataFrame, list[int], list[str]]:
    """LABELS.csv -> (rows with ``file, frame, subject, labels``, AUs, bad rows with line and reason)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise AUFormerError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    columns = label_columns(path, [str(c) for c in table.columns])
    kinds = {kind for _, kind in columns.values()}
    if "intensity" in kinds and intensity_threshold is None:
        shown = ", ".join(c for c, (_, kind) in columns.items() if kind == "intensity")
        raise AUFormerError(
            f"{path}: intensity columns ({shown}) need --intensity-threshold T (occurrence = intensity >= T, e.g. 2)"
        )
    table.columns = [c.strip().lower() if c.strip().lower() in _RESERVED else c for c in table.columns]
    if "frame" not in table.columns:
        table["frame"] = ""
    rows, bad = [], []
    for line, row in enumerate(table.to_dict("records"), start=2):
        try:
            if not row["file"].strip() or not row["subject"].strip():
                raise AUFormerError("empty file or subject")
            frame = row["frame"].strip()
            if frame and (not frame.isdigit()):
                raise AUFormerError(f"frame {frame!r} is not a 0-based frame index")
            labels = np.array([_label(row[c], kind, intensity_threshold) for c, (_, kind) in columns.items()], np.float32)
        except ValueError as error:
            bad.append(f"{path.name} line {line}: {error}")
            continue
        # labels (N, 2): occurrence, and the annotated intensity kept for intensity training (manifest AU12_int)
        rows.append(
            {
                "file": row["file"].strip(),
                "frame": int(frame) if frame else None,
                "subject": row["subject"].strip(),
                "labels": labels[:, 0],
                "intensity": labels[:, 1] if "intensity" in kinds else None,
                "line": line,
            }
        )
    frame_columns = ["file", "frame", "subject", "labels", "intensity", "line"]
    return pd.DataFrame(rows, columns=frame_columns), [au for au, _ in columns.values()], bad


def collect_folder(input_dir: str | Path, labels: pd.DataFrame, labels_name: str, bad_rows: list[str]) -> list[Source]:
    """One :class:`Source` per video and one per subject's photos; label rows that contradict the files go to ``bad_rows``.

    Each row's file is located inside INPUT (`auformer.files.resolve_inside`, links followed) and
    named by its path relative to INPUT, so two spellings of one file (``x.png``, ``sub/../x.png``)
    are one file; a row whose path leads out of INPUT is a bad row.
    """
    input_dir = Path(input_dir)

    def reject(rows: pd.DataFrame, file: str, reason: str) -> None:
        bad_rows.extend(f"{labels_name} line {r.line}: {file}: {reason}" for r in rows.itertuples())

    inside = {}
    for file, group in labels.groupby("file", sort=True):
        try:
            inside[file] = resolve_inside(input_dir, file, labels_name).relative_to(resolve(input_dir)).as_posix()
        except AUFormerError:
            reject(group, file, "not inside INPUT (an absolute path, '..' out of it, or a link out of it)")
    labels = labels[labels["file"].isin(list(inside))].assign(file=lambda rows: rows["file"].map(inside))
    photos: dict[str, tuple[list[Frame], list[Path | None]]] = {}
    sources = []
    for file, group in labels.groupby("file", sort=True):
        stem = Path(file).with_suffix("").as_posix()
        path = input_dir / file
        if Path(file).suffix.lower() in VIDEO_EXTENSIONS:
            group = group.sort_values("frame")
            no_frame = group["frame"].isna()
            repeated = group["frame"].duplicated() & ~no_frame
            reject(group[no_frame], file, "a video row needs a frame")
            reject(group[repeated], file, "frame labelled twice")
            group = group[~no_frame & ~repeated]
            frames = [
                Frame(f"images/{stem}_f{int(r.frame):06d}.jpg", r.subject, r.labels, f"{path}#{int(r.frame)}", r.intensity)
                for r in group.itertuples()
            ]
            if frames:
                sources.append(Source(frames, video=path, video_frames=[int(f) for f in group["frame"]]))
            continue
        reject(group[group["frame"].notna()], file, "a photo row takes no frame")
        group = group[group["frame"].isna()]
        reject(group.iloc[1:], file, "photo labelled twice")
        if group.empty:
            continue
        first = group.iloc[0]
        frames, paths = photos.setdefault(first.subject, ([], []))
        frames.append(Frame(f"images/{stem}.jpg", first.subject, first.labels, str(path), first.intensity))
        paths.append(path if path.is_file() else None)
    return sources + [Source(frames, image_paths=paths) for frames, paths in photos.values()]


def prepare_folder(
    input_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    folds: int = 3,
    intensity_threshold: float | None = None,
    **options: Any,
) -> PrepareReport:
    """Convert INPUT + LABELS.csv into a prepared dataset folder with ``folds`` subject-exclusive folds.

    ``options``: ``align``, ``detector``, ``size``, ``workers``, ``overwrite``, as in :func:`run_prepare`.
    """
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise FileNotFoundError(f"input folder not found: {input_dir}")
    if intensity_threshold is not None and not (0 < intensity_threshold <= 5 and math.isfinite(intensity_threshold)):
        raise AUFormerError(f"--intensity-threshold: {intensity_threshold} must be in (0, 5]")
    rows, aus, bad_rows = read_labels(labels_csv, intensity_threshold)
    if rows.empty:
        raise AUFormerError(f"{labels_csv}: no usable label rows ({len(bad_rows)} bad; first: {bad_rows[:1]})")
    sources = collect_folder(input_dir, rows, Path(labels_csv).name, bad_rows)
    subject_kfold(rows["subject"].tolist(), folds)  # a bad --folds is refused before any conversion

    def subject_folds(written_subjects: list[str]) -> list[list[str]]:
        """Subjects with a written image dealt into ``folds`` folds; one subject a fold when fewer are left."""
        present = sorted(set(written_subjects))
        if len(present) < folds:
            warnings.warn(
                f"only {len(present)} subjects have a written image: {len(present)} folds instead of --folds {folds}",
                stacklevel=2,
            )
            return [[subject] for subject in present]
        return subject_kfold(written_subjects, folds)

    return run_prepare(
        "folder", input_dir, out_dir, sources, aus, subject_folds, bad_rows=bad_rows, inputs=[labels_csv], **options
    )
