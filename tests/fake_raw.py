"""Builders of small fake raw BP4D / DISFA / CASME II trees, in the official layouts.

Each builder writes synthetic images (coloured blocks, black = "no face" for a stub
detector) and label files, and returns a :class:`FakeRaw` that says what a correct
conversion must produce: the expected label row of every manifest image, and which
frames must be reported as missing, unreadable or faceless.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from auformer.aus import BP4D_AUS, BP4D_INTENSITY_AUS, CASME2_AUS, DISFA_CODED_AUS
from auformer.data.folds import BP4D_FOLDS

BP4D_SUBJECTS: tuple[str, ...] = tuple(s for fold in BP4D_FOLDS for s in fold)  # all 41


@dataclass
class FakeRaw:
    """What a builder wrote. Keys are the manifest image paths a converter must produce."""

    root: Path
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # usable frames -> (N,) 1 / 0 / -1
    intensity: dict[str, np.ndarray] = field(default_factory=dict)  # usable frames -> (N,) 0-5 / -1 (intensity releases)
    missing: list[str] = field(default_factory=list)  # labelled, but image/frame absent
    unreadable: list[str] = field(default_factory=list)  # labelled, image file corrupt
    faceless: list[str] = field(default_factory=list)  # labelled, image all black (written only with align="none")
    bad_rows: int = 0  # label rows a converter must skip and report


def _face_image(rng: np.random.Generator, height: int = 24, width: int = 20) -> np.ndarray:
    """uint8 (H, W, 3) BGR image of bright random blocks (never dark: dark means 'no face')."""
    blocks = rng.integers(60, 256, size=(4, 4, 3), dtype=np.uint8)
    return cv2.resize(blocks, (width, height), interpolation=cv2.INTER_NEAREST)


def _write_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)


def make_fake_bp4d(
    root: str | Path,
    subjects: tuple[str, ...] = BP4D_SUBJECTS,
    tasks: tuple[str, ...] = ("T1",),
    frames: int = 3,
    zero_pad: bool = True,
    missing: int = 0,
    corrupt: int = 0,
    faceless: int = 0,
    seed: int = 0,
    intensity: bool = False,
) -> FakeRaw:
    """BP4D: ``AUCoding/AU_OCC/F001_T1.csv`` + ``2DFaces/F001/T1/0640.jpg`` (frames from 640).

    The CSVs code more AUs than the 12 of the protocol (5 and 28 too) and use 9 for
    unknown. The first ``missing``/``corrupt``/``faceless`` frames of the first sequence
    are left out / written as garbage / drawn black. All 41 subjects by default.
    ``intensity``: also write FERA 2015 ``AUCoding/AU_INT/AU06/F001_T1_AU06.csv`` files
    (codes 0-5 and 9; the AU06 files start with a header line, the AU17 file of the first
    sequence is absent and its last frame lacks an AU10 line: all unknown).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    fake = FakeRaw(root)
    label_dir = root / "AUCoding" / "AU_OCC"
    label_dir.mkdir(parents=True, exist_ok=True)
    coded_aus = sorted({*BP4D_AUS, 5, 28})
    frame_numbers = list(range(640, 640 + frames))
    special = ["missing"] * missing + ["corrupt"] * corrupt + ["faceless"] * faceless
    for subject in subjects:
        for task in tasks:
            codes = rng.choice([0, 1, 9], p=[0.6, 0.3, 0.1], size=(frames, len(coded_aus)))  # (F, A)
            rows = [[n, *row] for n, row in zip(frame_numbers, codes.tolist())]
            pd.DataFrame(rows, columns=["Frame", *map(str, coded_aus)]).to_csv(label_dir / f"{subject}_{task}.csv", index=False)
            levels = np.full((frames, len(BP4D_AUS)), -1.0, np.float32)  # (F, N) expected intensities
            if intensity:
                levels = _write_fera_intensity(
                    root, subject, task, frame_numbers, rng, first=not fake.labels and not fake.missing
                )
            for n, row, level in zip(frame_numbers, codes, levels):
                key = f"images/{subject}/{task}/{n:04d}.jpg"
                path = root / "2DFaces" / subject / task / (f"{n:04d}.jpg" if zero_pad else f"{n}.jpg")
                kind = special.pop(0) if special else "ok"
                if kind == "missing":
                    fake.missing.append(key)
                    continue
                if kind == "corrupt":
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"\xff\xd8 this is not a jpeg")
                    fake.unreadable.append(key)
                    continue
                image = np.zeros((24, 20, 3), np.uint8) if kind == "faceless" else _face_image(rng)
                _write_image(path, image)
                if kind == "faceless":
                    fake.faceless.append(key)
                coded = dict(zip(coded_aus, row.tolist()))
                fake.labels[key] = np.array([-1.0 if coded[au] == 9 else float(coded[au]) for au in BP4D_AUS], np.float32)
                if intensity:
                    fake.intensity[key] = level
    return fake


def _write_fera_intensity(
    root: Path, subject: str, task: str, frame_numbers: list[int], rng: np.random.Generator, first: bool
) -> np.ndarray:
    """Write one sequence's AU_INT files; return the expected intensities (F, 12) over BP4D_AUS (-1 unknown)."""
    levels = np.full((len(frame_numbers), len(BP4D_AUS)), -1.0, np.float32)
    for au in BP4D_INTENSITY_AUS:
        if first and au == 17:
            continue  # no file: unknown
        codes = rng.choice([0, 1, 2, 3, 4, 5, 9], size=len(frame_numbers))
        lines = [f"{n},{code}" for n, code in zip(frame_numbers, codes)]
        column = BP4D_AUS.index(au)
        levels[:, column] = np.where(codes == 9, -1.0, codes)
        if first and au == 10:
            lines, levels[-1, column] = lines[:-1], -1.0  # last frame not coded
        header = ["Frame,AU06"] if au == 6 else []
        path = root / "AUCoding" / "AU_INT" / f"AU{au:02d}" / f"{subject}_{task}_AU{au:02d}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(header + lines) + "\n")
    return levels


def make_fake_disfa(
    root: str | Path,
    subjects: tuple[str, ...] = ("SN001", "SN003", "SN006"),
    frames: int = 6,
    extra_label_frames: int = 1,
    seed: int = 0,
) -> FakeRaw:
    """DISFA: ``ActionUnit_Labels/SN001/SN001_au1.txt`` + ``Videos_LeftCamera/LeftVideoSN001_comp.avi`` (MJPG).

    Label files (all 12 coded AUs) cover ``extra_label_frames`` frames past the video's end
    (reported missing), and the AU9 file of the first subject lacks frame 2 (unknown label).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    fake = FakeRaw(root)
    video_dir = root / "Videos_LeftCamera"
    video_dir.mkdir(parents=True, exist_ok=True)
    labelled = range(1, frames + extra_label_frames + 1)
    for index, subject in enumerate(subjects):
        writer = cv2.VideoWriter(str(video_dir / f"LeftVideo{subject}_comp.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 20, (32, 24))
        for _ in range(frames):
            writer.write(_face_image(rng, 24, 32))
        writer.release()
        intensity = rng.integers(0, 6, size=(len(labelled), len(DISFA_CODED_AUS)))  # (F, N)
        label_dir = root / "ActionUnit_Labels" / subject
        label_dir.mkdir(parents=True, exist_ok=True)
        for column, au in enumerate(DISFA_CODED_AUS):
            lines = [f"{n},{intensity[n - 1, column]}" for n in labelled if not (index == 0 and au == 9 and n == 2)]
            (label_dir / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")
        for n in labelled:
            key = f"images/{subject}/{n:05d}.jpg"
            if n > frames:
                fake.missing.append(key)
                continue
            row = (intensity[n - 1] >= 2).astype(np.float32)
            level = intensity[n - 1].astype(np.float32)
            if index == 0 and n == 2:
                row[DISFA_CODED_AUS.index(9)] = level[DISFA_CODED_AUS.index(9)] = -1.0
            fake.labels[key], fake.intensity[key] = row, level
    return fake


# Action-unit strings as coded in CASME II, with the CASME2_AUS they must switch on.
CASME2_CODES: list[tuple[str, set[int]]] = [
    ("1+2+4", {1, 2, 4}),
    ("R12", {12}),
    ("L1+R2", {1, 2}),
    ("4+L10+15", {4, 15}),
    ("", set()),
    ("14+17", {14, 17}),
    ("7", {7}),
    ("AU12+AU15", {12, 15}),
]


def make_fake_casme2(root: str | Path, subjects: int = 5, clips: int = 2, seed: int = 0) -> FakeRaw:
    """CASME II: ``CASME2-coding-20140508.xlsx`` + ``CASME2_RAW_selected/sub01/EP02_01f/img12.jpg``.

    Clips run from frame 10 to 14 with apex 12; one extra row has apex ``/`` (a bad row)
    and one clip lacks its apex image (missing). Subjects are Excel numbers (1, 2, ...).
    """
    root, rng = Path(root), np.random.default_rng(seed)
    fake = FakeRaw(root)
    rows = []
    for subject in range(1, subjects + 1):
        for clip_index in range(clips):
            clip = f"EP{clip_index + 1:02d}_0{subject}f"
            code, expected = CASME2_CODES[(subject * clips + clip_index) % len(CASME2_CODES)]
            rows.append([subject, clip, 10, 12, 14, code, "others"])
            for n in range(10, 15):
                if not (subject == 1 and clip_index == 0 and n == 12):
                    _write_image(root / "CASME2_RAW_selected" / f"sub{subject:02d}" / clip / f"img{n}.jpg", _face_image(rng))
            key = f"images/sub{subject:02d}/{clip}_apex12.jpg"
            if subject == 1 and clip_index == 0:
                fake.missing.append(key)
            else:
                fake.labels[key] = np.array([float(au in expected) for au in CASME2_AUS], np.float32)
    rows.append([1, "EP09_09", 1, "/", 5, "1", "others"])
    fake.bad_rows = 1
    columns = ["Subject", "Filename", "OnsetFrame", "ApexFrame", "OffsetFrame", "Action Units", "Estimated Emotion"]
    pd.DataFrame(rows, columns=columns).to_excel(root / "CASME2-coding-20140508.xlsx", index=False)
    return fake
