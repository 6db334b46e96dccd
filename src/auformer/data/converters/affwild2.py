"""Aff-Wild2 (ABAW AU track): per-video 0/1/-1 label files + aligned face crops -> prepared dataset (12 AUs, official split).

Raw layout (each top folder may sit up to two levels below RAW_DIR)::

    .../AU_Detection_Challenge/Train_Set/<video>.txt       header AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26
    .../AU_Detection_Challenge/Validation_Set/<video>.txt  then line i+1 = frame i (1-based): 0/1 per AU, -1 = not annotated
    cropped_aligned/<video>/00001.jpg                      the released aligned crops, 5 digits, 1-based

Each video is a subject; the two people of one video (``<video>_left``, ``<video>_right``)
are two. Labels of -1 stay unknown (masked in losses and metrics) and are counted. Fold 0
of ``folds.json`` is the official split (test Validation_Set, train Train_Set); ``folds=K``
adds K subject-exclusive folds over Train_Set (folds 1..K).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from auformer.aus import AFFWILD2_AUS, parse_au
from auformer.data.converters import Frame, PrepareReport, Source, find_dir, numbered_images, run_prepare
from auformer.data.converters.common import read_label_text
from auformer.data.folds import subject_kfold
from auformer.errors import AUFormerError
from auformer.files import resolve_inside

TRAIN, VALIDATION = "Train_Set", "Validation_Set"
_CODES = {"1": 1.0, "0": 0.0, "-1": -1.0}


def parse_abaw_labels(text: str, source: str) -> np.ndarray:
    """Labels ``(M, 12)`` (1, 0, -1 unknown) of frames 1..M, columns in :data:`AFFWILD2_AUS` order.

    The header names the 12 ABAW AUs (any order); each later line holds 12 comma-separated
    codes 0, 1 or -1. Trailing blank lines are ignored; a blank line inside would shift every
    later frame, so it is an error. Every error is an :class:`AUFormerError` naming ``source`` and the line.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise AUFormerError(f"{source}: line 1: empty file (expected the header AU1,AU2,...,AU26)")
    try:
        header = [parse_au(cell) for cell in lines[0].split(",")]
    except AUFormerError as error:
        raise AUFormerError(f"{source}: line 1: header: {error}") from None
    if sorted(header) != sorted(AFFWILD2_AUS):
        expected = ",".join(f"AU{au}" for au in AFFWILD2_AUS)
        raise AUFormerError(f"{source}: line 1: header {lines[0].strip()[:80]!r} does not name the 12 AUs {expected}")
    order = [header.index(au) for au in AFFWILD2_AUS]
    labels = np.empty((len(lines) - 1, len(AFFWILD2_AUS)), dtype=np.float32)  # (M, 12)
    for row, line in enumerate(lines[1:]):
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(header) or not all(cell in _CODES for cell in cells):
            raise AUFormerError(f"{source}: line {row + 2}: {line.strip()[:80]!r} is not 12 codes 0, 1 or -1")
        labels[row] = [_CODES[cells[column]] for column in order]
    return labels


def _video_frames(
    label_file: Path, video: str, raw_dir: Path, crops_root: Path, drop_unannotated: bool
) -> tuple[list[Frame], list[Path | None], list[str], int]:
    """Frames of one video, their crops (None when missing), bad rows (crops out of RAW_DIR), and unannotated frames."""
    resolve_inside(raw_dir, str(label_file.relative_to(raw_dir)), "label file")
    labels = parse_abaw_labels(read_label_text(label_file), str(label_file))
    resolve_inside(crops_root, video, f"{label_file}: crop folder")  # the video's own folder, not cropped_aligned itself
    resolve_inside(raw_dir, str((crops_root / video).relative_to(raw_dir)), f"{label_file}: crop folder")
    crops = numbered_images(crops_root / video)
    unannotated = (labels < 0).all(axis=1)  # (M,)
    frames, paths, bad_rows = [], [], []
    for number, (row, empty) in enumerate(zip(labels, unannotated), start=1):
        if empty and drop_unannotated:
            continue
        crop = crops.get(number)
        if crop is not None and crop.is_symlink():  # a crop that is a link out of the release
            try:
                resolve_inside(raw_dir, str(crop.relative_to(raw_dir)), f"{label_file}: frame {number}")
            except AUFormerError as error:
                bad_rows.append(str(error))
                continue
        origin = str(crop or crops_root / video / f"{number:05d}.jpg")
        frames.append(Frame(f"images/{video}/{number:05d}.jpg", video, row, origin))
        paths.append(crop)
    return frames, paths, bad_rows, int(unannotated.sum())


def collect_affwild2(
    raw_dir: str | Path, drop_unannotated: bool = False
) -> tuple[list[Source], dict[str, list[str]], list[str], dict[str, Any]]:
    """One :class:`Source` per video, the videos of each split, the files skipped (with why) and the report's notes."""
    raw_dir = Path(raw_dir)
    annotations = find_dir(raw_dir, "AU_Detection_Challenge")
    crops_root = find_dir(raw_dir, "cropped_aligned")
    sources: list[Source] = []
    videos: dict[str, list[str]] = {TRAIN: [], VALIDATION: []}
    bad_rows: list[str] = []
    split_of: dict[str, Path] = {}
    frames_per_split = dict.fromkeys(videos, 0)
    unannotated = dict.fromkeys(videos, 0)
    for split in videos:
        label_files = sorted((annotations / split).glob("*.txt"))
        if not label_files:
            raise FileNotFoundError(f"{annotations / split}: no <video>.txt label files")
        for label_file in label_files:
            video = label_file.stem
            if video in split_of:
                raise AUFormerError(
                    f"{label_file}: video {video!r} is also in {split_of[video]} (the splits must not share videos)"
                )
            split_of[video] = label_file
            try:
                frames, paths, bad, empty = _video_frames(label_file, video, raw_dir, crops_root, drop_unannotated)
            except AUFormerError as error:
                bad_rows.append(str(error))
                continue
            bad_rows += bad
            unannotated[split] += empty
            frames_per_split[split] += len(frames)
            videos[split].append(video)
            sources.append(Source(frames, image_paths=paths))
    for split, names in videos.items():
        if not names:
            raise AUFormerError(f"{annotations / split}: no usable label file ({len(bad_rows)} bad)")
    notes = {
        "videos": {split: len(names) for split, names in videos.items()},
        "frames_labelled_per_split": frames_per_split,
        "unannotated_frames": unannotated,  # all 12 codes -1, per split
        "unannotated_dropped": drop_unannotated,
    }
    return sources, videos, bad_rows, notes


def affwild2_folds(videos: dict[str, list[str]], folds: int | None = None) -> list[list[str]]:
    """Fold 0: the Validation_Set videos (so training on fold 0 = Train_Set); then Train_Set whole, or in ``folds`` subject folds."""
    train = [videos[TRAIN]] if folds is None else subject_kfold(videos[TRAIN], folds)
    return [sorted(videos[VALIDATION]), *(sorted(fold) for fold in train)]


def prepare_affwild2(
    raw_dir: str | Path,
    out_dir: str | Path,
    folds: int | None = None,
    drop_unannotated: bool = False,
    align: str = "none",
    **options: Any,
) -> PrepareReport:
    """Convert the Aff-Wild2 AU track (ABAW layout) into a prepared dataset folder.

    The released crops are aligned already: ``align="none"`` only resizes them. ``folds``:
    add that many subject-exclusive folds over Train_Set (fold 0 stays the official split).
    ``drop_unannotated``: leave out frames whose 12 codes are all -1 (counted either way).
    ``options``: ``detector``, ``size``, ``workers``, as in :func:`run_prepare`.
    """
    sources, videos, bad_rows, notes = collect_affwild2(raw_dir, drop_unannotated)
    fold_subjects = affwild2_folds(videos, folds)
    parts = [TRAIN] if folds is None else [f"{TRAIN} part {k + 1}" for k in range(folds)]
    names = [f"{VALIDATION} (official test split)", *parts]
    fold_notes = {"official_split": {"fold": 0, "train": TRAIN, "test": VALIDATION}, "fold_names": names}
    report = run_prepare(
        "affwild2", Path(raw_dir), out_dir, sources, AFFWILD2_AUS, fold_subjects, align=align, bad_rows=bad_rows,
        notes=notes, fold_notes=fold_notes, **options,
    )  # fmt: skip
    counts = notes["unannotated_frames"]
    action = "left out" if drop_unannotated else "kept, labels unknown"
    print(f"  unannotated frames (all -1, {action}): {counts[TRAIN]} in {TRAIN}, {counts[VALIDATION]} in {VALIDATION}")
    print(
        f"  fold 0 is the official split: train {TRAIN} ({len(videos[TRAIN])} videos), test {VALIDATION} ({len(videos[VALIDATION])})"
    )
    return report
