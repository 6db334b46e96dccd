"""CK+: FACS-coded peak frames of posed sequences -> prepared dataset (the AUs with enough positives, 10 subject folds).

Raw layout of the official release (each top folder may sit up to two levels below RAW_DIR)::

    cohn-kanade-images/S005/001/S005_001_00000001.png   frames; the first is neutral, the last the peak
    FACS/S005/001/S005_001_00000011_facs.txt            one per coded sequence, named after its peak frame;
                                                         lines "AU intensity" as floats ("1.0000000e+00 0.0000000e+00"),
                                                         intensity 0 = present, intensity not coded; 1-5 = A-E
    Emotion/..., Landmarks/...                          optional, not read

The common protocol: the peak frame is labelled with its coded AUs present and every other
AU absent; ``peak_frames`` > 1 labels the last N frames alike; ``neutral_first`` adds each
sequence's first frame with every AU absent. Sequences without a FACS file are listed in
the report, never guessed. AUs with fewer than ``min_positives`` coded sequences are left out.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from auformer.aus import au_column, au_columns, parse_au
from auformer.data.converters import Frame, PrepareReport, Source, find_dir, numbered_images, run_prepare
from auformer.data.converters.common import read_label_text
from auformer.data.folds import subject_kfold
from auformer.errors import AUFormerError
from auformer.files import resolve_inside

# At least 40 coded sequences keeps about 16 AUs (1 2 4 5 6 7 9 12 15 17 20 23 24 25 26 27 by the AU counts of
# Lucey et al. 2010, not checked on the release here), within the 13-17 AUs papers report on CK+.
DEFAULT_MIN_POSITIVES = 40
DEFAULT_FOLDS = 10
_SUBJECT = re.compile(r"^S\d+$", re.IGNORECASE)
_FACS_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)_facs\.txt$", re.IGNORECASE)


def parse_facs(text: str, source: str) -> dict[int, int]:
    """AU -> intensity (0 = present, intensity not coded; 1-5 = A-E) of one FACS file's text.

    Every line holds two numbers, the AU and its intensity, written as floats; blank lines
    are ignored. Anything else is an :class:`AUFormerError` naming ``source`` and the line.
    """
    codes: dict[int, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}: line {number}"
        cells = line.split()
        try:
            au_value, level = (float(cell) for cell in cells) if len(cells) == 2 else (None, None)
        except ValueError:
            au_value = level = None
        if au_value is None or not au_value.is_integer() or level not in (0, 1, 2, 3, 4, 5):
            raise AUFormerError(f"{where}: {line.strip()[:60]!r} is not 'AU intensity' (two numbers, intensity 0-5)")
        try:
            au = parse_au(int(au_value))
        except AUFormerError as error:
            raise AUFormerError(f"{where}: {error}") from None
        if au in codes:
            raise AUFormerError(f"{where}: AU{au} is coded twice")
        codes[au] = int(level)
    if not codes:
        raise AUFormerError(f"{source}: line 1: no AU codes (an empty FACS file)")
    return codes


def read_facs_file(path: Path) -> dict[int, int]:
    """:func:`parse_facs` of one FACS file."""
    return parse_facs(read_label_text(path), str(path))


class CodedSequence(NamedTuple):
    """One sequence with a usable FACS file."""

    subject: str
    sequence: str
    codes: dict[int, int]  # AU -> intensity, 0 = not coded
    peak: int  # frame number the FACS file names
    images: dict[int, Path]  # frame number -> image


def _peak_frame(facs_dir: Path, subject: str, sequence: str) -> tuple[Path, int] | None:
    """The sequence's FACS file and peak frame number; None without a file; an error when it is unusable."""
    files = sorted(facs_dir.glob("*_facs.txt")) if facs_dir.is_dir() else []
    if not files:
        return None
    if len(files) > 1:
        raise AUFormerError(f"{facs_dir}: {len(files)} FACS files for one sequence ({', '.join(p.name for p in files)})")
    match = _FACS_NAME.match(files[0].name)
    if match is None or (match.group(1).upper(), match.group(2)) != (subject.upper(), sequence):
        raise AUFormerError(f"{files[0]}: name is not {subject}_{sequence}_<peak frame>_facs.txt")
    return files[0], int(match.group(3))


def _sequence_frames(
    coded: CodedSequence, aus: list[int], peak_frames: int, neutral_first: bool, images_dir: Path
) -> tuple[list[Frame], list[Path | None]]:
    """Frames of one coded sequence: the first (with ``neutral_first``) and the last ``peak_frames`` up to the peak."""
    subject, sequence, codes, peak, images = coded
    present = np.array([au in codes for au in aus], dtype=np.float32)  # (N,)
    # Intensity: an absent AU is 0; a present AU has its code 1-5 on the peak frame, and is unknown (-1)
    # where it was coded 0 (not coded) and on the frames before the peak (they are not what was coded).
    peak_level = np.array([codes[au] if codes.get(au) else -1.0 if au in codes else 0.0 for au in aus], np.float32)
    before_peak = np.where(present == 1, -1.0, 0.0).astype(np.float32)  # (N,)
    first_peak = max(1, peak - peak_frames + 1)
    labelled = [(n, present, peak_level if n == peak else before_peak) for n in range(first_peak, peak + 1)]
    first = min(images, default=1)
    if neutral_first and first < first_peak:
        labelled.insert(0, (first, np.zeros_like(present), np.zeros_like(present)))
    frames, paths = [], []
    for n, labels, level in labelled:
        name = f"{subject}_{sequence}_{n:08d}"
        path = images.get(n)
        origin = str(path or images_dir / subject / sequence / f"{name}.png")
        frames.append(Frame(f"images/{subject}/{sequence}/{name}.jpg", subject, labels, origin, level))
        paths.append(path)
    return frames, paths


def collect_ckplus(
    raw_dir: str | Path, peak_frames: int = 1, neutral_first: bool = False, min_positives: int = DEFAULT_MIN_POSITIVES
) -> tuple[list[Source], list[int], list[str], dict[str, Any]]:
    """One :class:`Source` per subject, the AUs kept, the sequences skipped (with why) and the report's notes."""
    if peak_frames < 1 or min_positives < 1:
        raise AUFormerError(f"peak frames and minimum positives must be at least 1, got {peak_frames} and {min_positives}")
    raw_dir = Path(raw_dir)
    images_dir, facs_root = find_dir(raw_dir, "cohn-kanade-images"), find_dir(raw_dir, "FACS")
    sequences = sorted(
        {
            (subject.name, folder.name)
            for root in (images_dir, facs_root)
            for subject in root.iterdir()
            if subject.is_dir() and _SUBJECT.match(subject.name)
            for folder in subject.iterdir()
            if folder.is_dir()
        }
    )
    coded: list[CodedSequence] = []
    bad_rows: list[str] = []
    without_facs: list[str] = []
    for subject, sequence in sequences:
        try:
            found = _peak_frame(facs_root / subject / sequence, subject, sequence)
            if found is None:
                without_facs.append(f"{subject}/{sequence}")
                continue
            facs_file, peak = found
            resolve_inside(raw_dir, str(facs_file.relative_to(raw_dir)), "FACS file")
            images = numbered_images(images_dir / subject / sequence)
            for path in images.values():  # a frame that is a link out of the release
                resolve_inside(raw_dir, str(path.relative_to(raw_dir)), f"{subject}/{sequence}: image")
            coded.append(CodedSequence(subject, sequence, read_facs_file(facs_file), peak, images))
        except AUFormerError as error:
            bad_rows.append(str(error))
    if not coded:
        raise AUFormerError(f"{facs_root}: no usable FACS file ({len(bad_rows)} bad, {len(without_facs)} sequences without one)")
    counts = Counter(au for sequence in coded for au in sequence.codes)  # coded sequences per AU
    aus = sorted(au for au, count in counts.items() if count >= min_positives)
    if not aus:
        most, count = counts.most_common(1)[0]
        raise AUFormerError(f"no AU is coded in {min_positives} sequences (the most: AU{most}, {count}); lower the minimum")
    by_subject: dict[str, tuple[list[Frame], list[Path | None]]] = {}
    for sequence in coded:
        frames, paths = by_subject.setdefault(sequence.subject, ([], []))
        more_frames, more_paths = _sequence_frames(sequence, aus, peak_frames, neutral_first, images_dir)
        frames += more_frames
        paths += more_paths
    notes = {
        "sequences_coded": len(coded),
        "sequences_without_facs": without_facs,
        "facs_positives": {au_column(au): counts[au] for au in sorted(counts)},  # before the minimum
        "aus_dropped": au_columns(sorted(set(counts) - set(aus))),
        "protocol": {"peak_frames": peak_frames, "neutral_first": neutral_first, "min_positives": min_positives},
    }
    return [Source(frames, image_paths=paths) for frames, paths in by_subject.values()], aus, bad_rows, notes


def prepare_ckplus(
    raw_dir: str | Path,
    out_dir: str | Path,
    peak_frames: int = 1,
    neutral_first: bool = False,
    min_positives: int = DEFAULT_MIN_POSITIVES,
    folds: int = DEFAULT_FOLDS,
    **options: Any,
) -> PrepareReport:
    """Convert a raw CK+ release (peak frames) into a prepared dataset folder with ``folds`` subject-exclusive folds.

    ``options``: ``align``, ``detector``, ``size``, ``workers``, as in :func:`run_prepare`.
    """
    sources, aus, bad_rows, notes = collect_ckplus(raw_dir, peak_frames, neutral_first, min_positives)
    fold_subjects = subject_kfold([frame.subject for source in sources for frame in source.frames], folds)
    report = run_prepare("ckplus", Path(raw_dir), out_dir, sources, aus, fold_subjects, bad_rows=bad_rows, notes=notes, **options)
    without = notes["sequences_without_facs"]
    shown = f" ({', '.join(without[:5])}{', ...' if len(without) > 5 else ''})" if without else ""
    print(f"  sequences without a FACS file (not labelled): {len(without)}{shown}")
    print(f"  AUs kept (coded in >= {min_positives} sequences): {' '.join(map(str, aus))}")
    return report
