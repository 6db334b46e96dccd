"""BP4D: per-task occurrence CSVs + frame images -> prepared dataset (12 AUs, 3 literature folds).

Raw layout (any of these folders may sit up to two levels below RAW_DIR)::

    AUCoding/AU_OCC/F001_T1.csv    header: a frame column, then AU numbers; values 0, 1, 9 (= unknown)
    F001/T1/0643.jpg               frame images, numbers zero-padded or not (.jpg/.jpeg/.png/.bmp)
    AUCoding/AU_INT/AU06/F001_T1_AU06.csv   optional FERA 2015 intensities: lines "frame,intensity", 0-5, 9 = unknown

With ``AU_INT`` the manifest gets ``AU06_int`` ... columns for the 5 intensity AUs
(6, 10, 12, 14, 17); frames or sequences without an intensity code are unknown.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from auformer.aus import BP4D_AUS, BP4D_INTENSITY_AUS, au_column, parse_au
from auformer.data.converters import (
    Frame,
    PrepareReport,
    Source,
    find_dir,
    find_root,
    numbered_images,
    read_frame_intensity,
    run_prepare,
    search,
)
from auformer.data.folds import BP4D_FOLDS
from auformer.errors import AUFormerError

_SEQUENCE_CSV = re.compile(r"^([FM]\d{3})_(T\d+)$", re.IGNORECASE)
UNKNOWN_CODE = 9


def read_occurrence_csv(path: Path, aus: tuple[int, ...] = BP4D_AUS) -> tuple[np.ndarray, np.ndarray]:
    """Frame numbers ``(M,)`` and labels ``(M, N)`` (1, 0, -1 for code 9) of one BP4D ``AU_OCC`` file."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise AUFormerError(f"{path}: not a readable CSV ({str(error).splitlines()[0]})") from None
    columns: dict[int, str] = {}
    for column in table.columns[1:]:
        try:
            columns.setdefault(parse_au(str(column)), column)
        except ValueError:
            continue  # BP4D files code more AUs than the 12 of the protocol; unusable headers are not needed
    missing = [au_column(au) for au in aus if au not in columns]
    if missing:
        raise AUFormerError(f"{path}: no column for {', '.join(missing)} (header: {','.join(map(str, table.columns))})")
    frames = pd.to_numeric(table.iloc[:, 0], errors="coerce").to_numpy()
    if np.isnan(frames).any():
        line = int(np.flatnonzero(np.isnan(frames))[0]) + 2
        raise AUFormerError(f"{path}: line {line}: frame number {table.iloc[line - 2, 0]!r} is not a number")
    raw = table[[columns[au] for au in aus]].to_numpy(dtype=str)  # (M, N)
    valid = np.isin(raw, ["0", "1", str(UNKNOWN_CODE)])
    if not valid.all():
        row, col = np.argwhere(~valid)[0]
        raise AUFormerError(f"{path}: line {row + 2}, AU{aus[col]}: invalid code {str(raw[row, col])!r} (expected 0, 1 or 9)")
    labels = np.where(raw == "1", 1.0, np.where(raw == "0", 0.0, -1.0)).astype(np.float32)
    return frames.astype(np.int64), labels


def sequence_intensity(intensity_dir: Path | None, subject: str, task: str, frames: np.ndarray) -> np.ndarray | None:
    """Intensities ``(M, N)`` over BP4D_AUS of one sequence's ``frames`` (-1 unknown or not coded); None without AU_INT."""
    if intensity_dir is None:
        return None
    intensity = np.full((len(frames), len(BP4D_AUS)), -1.0, dtype=np.float32)  # (M, N)
    for au in BP4D_INTENSITY_AUS:
        path = intensity_dir / au_column(au) / f"{subject}_{task}_{au_column(au)}.csv"
        if path.is_file():
            codes = read_frame_intensity(path, UNKNOWN_CODE)
            intensity[:, BP4D_AUS.index(au)] = [codes.get(frame, -1.0) for frame in frames.tolist()]
    return intensity


def collect_bp4d(raw_dir: str | Path) -> tuple[list[Source], list[str]]:
    """One :class:`Source` per subject/task sequence, and the label files that were skipped (with why)."""
    raw_dir = Path(raw_dir)
    label_dir = find_dir(raw_dir, "AUCoding/AU_OCC")
    csv_files = sorted(label_dir.glob("*.csv"))
    if not csv_files:
        raise FileNotFoundError(f"{label_dir}: no AU_OCC csv files")
    sequences = [(path, _SEQUENCE_CSV.match(path.stem)) for path in csv_files]
    skipped = [f"{path}: name is not SUBJECT_TASK.csv (e.g. F001_T1.csv)" for path, match in sequences if match is None]
    sequences = [(path, match.group(1).upper(), match.group(2).upper()) for path, match in sequences if match]
    frames_root = find_root(raw_dir, [f"{subject}/{task}" for _, subject, task in sequences])
    intensity_dir = next((path for path in search(raw_dir, "AUCoding/AU_INT") if path.is_dir()), None)
    sources = []
    for path, subject, task in sequences:
        numbers, labels = read_occurrence_csv(path)
        intensity = sequence_intensity(intensity_dir, subject, task, numbers)
        levels = [None] * len(numbers) if intensity is None else list(intensity)
        images = numbered_images(frames_root / subject / task)
        frames = [
            Frame(f"images/{subject}/{task}/{n:04d}.jpg", subject, row, str(images.get(n, f"{subject}/{task}/frame {n}")), level)
            for n, row, level in zip(numbers.tolist(), labels, levels)
        ]
        sources.append(Source(frames, image_paths=[images.get(n) for n in numbers.tolist()]))
    return sources, skipped


def prepare_bp4d(raw_dir: str | Path, out_dir: str | Path, **options: Any) -> PrepareReport:
    """Convert a raw BP4D release into a prepared dataset folder.

    ``options``: ``align``, ``detector``, ``size``, ``workers``, ``overwrite``, as in :func:`run_prepare`.
    """
    sources, skipped = collect_bp4d(raw_dir)
    return run_prepare("bp4d", Path(raw_dir), out_dir, sources, BP4D_AUS, BP4D_FOLDS, bad_rows=skipped, **options)
