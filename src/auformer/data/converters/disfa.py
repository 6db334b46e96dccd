"""DISFA: per-AU intensity files + left-camera videos -> prepared dataset (12 AUs, 3 literature folds).

Raw layout (either folder may sit up to two levels below RAW_DIR)::

    ActionUnit_Labels/SN001/SN001_au1.txt        lines "frame,intensity", frame 1 = first video frame
    Videos_LeftCamera/LeftVideoSN001_comp.avi    (.avi or .mp4, any letter case)

Occurrence is intensity >= 2 (the literature's rule); frames are decoded with OpenCV.
The manifest keeps all 12 coded AUs, occurrence (``AU05``) and intensity (``AU05_int``);
the occurrence protocol's 8 AUs are chosen by the ``disfa`` preset (``data.aus``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from auformer.aus import DISFA_CODED_AUS
from auformer.data.converters import Frame, PrepareReport, Source, find_dir, read_frame_intensity, run_prepare
from auformer.data.folds import DISFA_FOLDS

OCCURRENCE_INTENSITY = 2
_SUBJECT = re.compile(r"^SN\d{3}$", re.IGNORECASE)
_VIDEO = re.compile(r"^LeftVideo(SN\d{3})_comp\.(avi|mp4)$", re.IGNORECASE)


def read_intensity_file(path: Path) -> dict[int, float]:
    """Frame number -> intensity (0-5) of one DISFA label file (the rule of `read_frame_intensity`)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: DISFA label file missing")
    return read_frame_intensity(path)


def subject_labels(
    label_dir: Path, subject: str, aus: tuple[int, ...] = DISFA_CODED_AUS
) -> tuple[list[int], np.ndarray, np.ndarray]:
    """Frame numbers (ascending), occurrence labels and intensities ``(M, N)``; a frame absent from one AU's file is unknown (-1)."""
    per_au = [read_intensity_file(label_dir / f"{subject}_au{au}.txt") for au in aus]
    frames = sorted(set().union(*per_au))
    intensity = np.full((len(frames), len(aus)), -1.0, dtype=np.float32)  # (M, N)
    for column, per_frame in enumerate(per_au):
        known = [row for row, frame in enumerate(frames) if frame in per_frame]
        intensity[known, column] = [per_frame[frames[row]] for row in known]
    labels = np.where(intensity < 0, -1.0, (intensity >= OCCURRENCE_INTENSITY).astype(np.float32)).astype(np.float32)
    return frames, labels, intensity


def collect_disfa(raw_dir: str | Path) -> list[Source]:
    """One :class:`Source` per subject (its left-camera video)."""
    raw_dir = Path(raw_dir)
    labels_root = find_dir(raw_dir, "ActionUnit_Labels")
    subjects = sorted(p.name.upper() for p in labels_root.iterdir() if p.is_dir() and _SUBJECT.match(p.name))
    if not subjects:
        raise FileNotFoundError(f"{labels_root}: no subject folders like SN001")
    video_dir = find_dir(raw_dir, "Videos_LeftCamera")
    videos = {m.group(1).upper(): p for p in video_dir.iterdir() if (m := _VIDEO.match(p.name))}
    sources = []
    for subject in subjects:
        frames, labels, intensity = subject_labels(labels_root / subject, subject)
        video = videos.get(subject)
        origin = f"{video or video_dir / f'LeftVideo{subject}_comp.avi'}#"
        items = [
            Frame(f"images/{subject}/{n:05d}.jpg", subject, row, f"{origin}{n}", level)
            for n, row, level in zip(frames, labels, intensity)
        ]
        if video is None:
            sources.append(Source(items, image_paths=[None] * len(items)))
        else:
            sources.append(Source(items, video=video, video_frames=[n - 1 for n in frames]))
    return sources


def prepare_disfa(raw_dir: str | Path, out_dir: str | Path, **options: Any) -> PrepareReport:
    """Convert a raw DISFA release into a prepared dataset folder.

    ``options``: ``align``, ``detector``, ``size``, ``workers``, ``overwrite``, as in :func:`run_prepare`.
    """
    return run_prepare("disfa", Path(raw_dir), out_dir, collect_disfa(raw_dir), DISFA_CODED_AUS, DISFA_FOLDS, **options)
