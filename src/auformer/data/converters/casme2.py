"""CASME II: coding spreadsheet + clip folders -> prepared dataset of apex frames (8 AUs, 4 folds).

Raw layout (the spreadsheet and the clip folders may sit up to two levels below RAW_DIR)::

    CASME2-coding-20140508.xlsx   columns Subject, Filename, OnsetFrame, ApexFrame, OffsetFrame,
                                  Action Units ("1+2+4", "R12", "L1+R2", "4+L10", ...)
    sub01/EP02_01f/img46.jpg      frame images; any name ending in the frame number (reg_img46.jpg)

Only the apex frame of each clip is used. Rows without a usable apex or AU code are
reported under ``bad_rows``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from auformer.aus import CASME2_AUS, parse_au_list
from auformer.data.converters import Frame, PrepareReport, Source, find_root, numbered_images, run_prepare, search
from auformer.data.folds import casme2_folds
from auformer.errors import AUFormerError
from auformer.files import resolve_inside

_COLUMNS = {"subject": "Subject", "filename": "Filename", "apexframe": "ApexFrame", "actionunits": "Action Units"}


def find_coding_sheet(raw_dir: Path) -> Path:
    """The ``CASME2-coding-*.xlsx`` spreadsheet in RAW_DIR or up to two levels below."""
    sheets = search(raw_dir, "CASME2-coding*.xlsx")
    if sheets:
        return sheets[0]
    raise FileNotFoundError(f"{raw_dir}: no CASME2-coding-*.xlsx spreadsheet in it or up to two levels below")


def read_coding_sheet(path: Path) -> pd.DataFrame:
    """The spreadsheet with its columns renamed to ``subject, filename, apexframe, actionunits``."""
    sheet = pd.read_excel(path, dtype=str, keep_default_na=False, engine="openpyxl")
    sheet.columns = [re.sub(r"\W", "", str(c)).lower() for c in sheet.columns]
    missing = [name for key, name in _COLUMNS.items() if key not in sheet.columns]
    if missing:
        raise AUFormerError(f"{path}: missing columns {', '.join(missing)} (found {', '.join(sheet.columns)})")
    return sheet


def subject_folder(value: str) -> str:
    """``1``, ``01``, ``1.0`` or ``sub01`` -> ``sub01``."""
    digits = re.fullmatch(r"(?:sub)?0*(\d+)(?:\.0+)?", value.strip(), re.IGNORECASE)
    if digits is None:
        raise AUFormerError(f"subject {value!r} is not a number or subNN")
    return f"sub{int(digits.group(1)):02d}"


def collect_casme2(raw_dir: str | Path, aus: tuple[int, ...] = CASME2_AUS) -> tuple[list[Source], list[str]]:
    """One :class:`Source` per subject (its clips' apex frames), and the rows skipped with why."""
    raw_dir = Path(raw_dir)
    sheet_path = find_coding_sheet(raw_dir)
    sheet = read_coding_sheet(sheet_path)
    clips: list[tuple[str, str, int, list[int], str]] = []
    bad_rows: list[str] = []
    for line, row in enumerate(sheet.itertuples(index=False), start=2):
        where = f"{sheet_path.name} line {line}"
        try:
            subject, apex, clip = subject_folder(row.subject), int(float(row.apexframe)), row.filename.strip()
            resolve_inside(raw_dir / subject, clip, "Filename")  # a clip folder inside its subject's folder
            clips.append((subject, clip, apex, parse_au_list(row.actionunits), where))
        except ValueError as error:
            bad_rows.append(f"{where}: {error}")
    if not clips:
        raise AUFormerError(f"{sheet_path}: no usable rows ({len(bad_rows)} bad)")
    clips_root = find_root(raw_dir, [f"{subject}/{clip}" for subject, clip, *_ in clips])
    by_subject: dict[str, tuple[list[Frame], list[Path | None]]] = {}
    for subject, clip, apex, present, where in clips:
        image = numbered_images(clips_root / subject / clip).get(apex)
        labels = np.array([float(au in present) for au in aus], dtype=np.float32)  # (N,)
        frames, paths = by_subject.setdefault(subject, ([], []))
        origin = str(image or f"{subject}/{clip} apex {apex} ({where})")
        frames.append(Frame(f"images/{subject}/{clip}_apex{apex}.jpg", subject, labels, origin))
        paths.append(image)
    return [Source(frames, image_paths=paths) for frames, paths in by_subject.values()], bad_rows


def prepare_casme2(raw_dir: str | Path, out_dir: str | Path, **options: Any) -> PrepareReport:
    """Convert a raw CASME II release (apex frames) into a prepared dataset folder.

    ``options``: ``align``, ``detector``, ``size``, ``workers``, ``overwrite``, as in :func:`run_prepare`.
    """
    sources, bad_rows = collect_casme2(raw_dir)
    folds = casme2_folds([frame.subject for source in sources for frame in source.frames])
    return run_prepare("casme2", Path(raw_dir), out_dir, sources, CASME2_AUS, folds, bad_rows=bad_rows, **options)
