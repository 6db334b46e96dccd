"""Builders of small fake CK+ and Aff-Wild2 (ABAW AU track) releases, in the official layouts.

The frames are scikit-image's astronaut, shrunk (CK+: grey 64x49 frames as the 640x490
originals, one colour sequence; Aff-Wild2: 28x28 colour crops), each frame shifted a little.
The label files are written out literally below, so the tests can state by hand what a
correct conversion gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

# (subject, sequence): (number of frames, FACS codes (AU, intensity) of the last frame, or None: no FACS file)
CKPLUS_SEQUENCES: dict[tuple[str, str], tuple[int, list[tuple[int, int]] | None]] = {
    ("S005", "001"): (4, [(1, 0), (2, 0), (12, 3), (25, 0)]),
    ("S010", "002"): (3, [(12, 2), (25, 0)]),
    ("S011", "001"): (5, [(1, 4), (2, 3), (5, 0), (25, 0), (27, 0)]),
    ("S011", "002"): (3, None),
    ("S022", "003"): (4, [(4, 2), (7, 0), (12, 0)]),
}
CKPLUS_COLOUR = ("S022", "003")  # CK+ is mostly grey; some sequences are colour

ABAW_HEADER = "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"
UNANNOTATED = ",".join(["-1"] * 12)
# split -> video -> label lines after the header (line i = frame i)
ABAW_LABELS: dict[str, dict[str, list[str]]] = {
    "Train_Set": {
        "video1": [
            "1,0,0,0,0,0,0,0,0,0,0,0",
            UNANNOTATED,
            "0,0,0,1,1,0,1,0,0,0,1,0",
            "0,1,0,0,0,0,0,0,0,0,0,1",
        ],
        "10-60-1280x720_left": ["0,0,1,0,0,0,0,0,0,0,0,0", "0,0,1,0,0,1,0,0,0,0,0,0"],
        "10-60-1280x720_right": ["0,0,0,0,0,0,1,0,0,0,1,1", UNANNOTATED],
    },
    "Validation_Set": {"video2": ["1,1,0,0,0,0,0,0,0,0,0,0", "0,0,0,0,0,0,0,1,1,1,0,0"]},
}
# video -> frames with a crop in cropped_aligned (video1's frame 3 has none; video2 has a crop past its labels;
# video3 has crops but no label file, as the ABAW test set)
ABAW_CROPS: dict[str, list[int]] = {
    "video1": [1, 2, 4],
    "10-60-1280x720_left": [1, 2],
    "10-60-1280x720_right": [1, 2],
    "video2": [1, 2, 3],
    "video3": [1],
}


def _face(shift: int, size: tuple[int, int], grey: bool) -> Image.Image:
    """The astronaut's face shifted ``shift`` pixels, resized to ``size`` (width, height)."""
    face = np.roll(data.astronaut()[30:290, 90:370], 3 * shift, axis=1)  # (260, 280, 3)
    image = Image.fromarray(face).resize(size)
    return image.convert("L") if grey else image


def facs_text(codes: list[tuple[int, int]]) -> str:
    """A FACS file as the release writes it: lines '   1.0000000e+00   0.0000000e+00'."""
    return "".join(f"{float(au):16.7e}{float(level):16.7e}\n" for au, level in codes)


def make_fake_ckplus(root: str | Path) -> Path:
    """``cohn-kanade-images/``, ``FACS/``, and a bit of the optional ``Emotion/`` and ``Landmarks/``, under ``root``."""
    root = Path(root)
    for (subject, sequence), (frames, codes) in CKPLUS_SEQUENCES.items():
        folder = root / "cohn-kanade-images" / subject / sequence
        folder.mkdir(parents=True)
        for n in range(1, frames + 1):
            grey = (subject, sequence) != CKPLUS_COLOUR
            _face(n, (64, 49), grey).save(folder / f"{subject}_{sequence}_{n:08d}.png")
        if codes is not None:
            facs = root / "FACS" / subject / sequence
            facs.mkdir(parents=True)
            (facs / f"{subject}_{sequence}_{frames:08d}_facs.txt").write_text(facs_text(codes))
    emotion = root / "Emotion" / "S005" / "001"
    emotion.mkdir(parents=True)
    (emotion / "S005_001_00000004_emotion.txt").write_text("   3.0000000e+00\n")
    landmarks = root / "Landmarks" / "S005" / "001"
    landmarks.mkdir(parents=True)
    (landmarks / "S005_001_00000001_landmarks.txt").write_text("   1.0e+02   2.0e+02\n" * 68)
    return root


def make_fake_affwild2(root: str | Path) -> Path:
    """``Annotations/AU_Detection_Challenge/{Train_Set,Validation_Set}/<video>.txt`` and ``cropped_aligned/`` under ``root``."""
    root = Path(root)
    for split, videos in ABAW_LABELS.items():
        folder = root / "Annotations" / "AU_Detection_Challenge" / split
        folder.mkdir(parents=True)
        for video, lines in videos.items():
            (folder / f"{video}.txt").write_text("\n".join([ABAW_HEADER, *lines]) + "\n")
    for shift, (video, numbers) in enumerate(ABAW_CROPS.items()):
        folder = root / "cropped_aligned" / video
        folder.mkdir(parents=True)
        for n in numbers:
            _face(shift + n, (28, 28), grey=False).save(folder / f"{n:05d}.jpg", quality=90)
    return root
