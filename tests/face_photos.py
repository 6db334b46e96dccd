"""Real face photos that installed packages ship, framed as portraits and composed into a group photo.

Nothing is committed or downloaded: the faces are ``skimage.data.astronaut()``,
matplotlib's ``grace_hopper.jpg`` sample and ``skimage.data.lfw_subset()``.
`tests/test_faces.py`, `tests/test_track.py` and `benchmarks/bench_detect.py` share them.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from matplotlib import cbook
from skimage import data

# Five dlib landmarks (left eye, right eye, nose, mouth corners) of the two sharp photos, measured once.
ASTRONAUT_EYES = np.array([[203.0, 102.0], [246.0, 104.0]])  # (2, 2) x, y
HOPPER_EYES = np.array([[224.0, 192.0], [305.0, 189.0]])


@functools.cache
def grace_hopper() -> np.ndarray:
    """matplotlib's sample portrait of Grace Hopper, (600, 512, 3) uint8 RGB."""
    path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def lfw_images(count: int | None = None) -> list[np.ndarray]:
    """``lfw_subset()`` as (150, 150, 3) RGB: 100 faces then 100 non-faces (or the first ``count`` faces).

    The 25x25 crops are cut at the face outline; detectors need some context around
    the face and a face of at least ~40 px, hence the upscale to 100 px and the
    replicated 25 px border.
    """
    images = []
    for gray in (data.lfw_subset()[:count] * 255).round().astype(np.uint8):
        big = cv2.resize(gray, (100, 100), interpolation=cv2.INTER_CUBIC)
        big = cv2.copyMakeBorder(big, 25, 25, 25, 25, cv2.BORDER_REPLICATE)  # (150, 150)
        images.append(np.repeat(big[:, :, None], 3, axis=2))  # (150, 150, 3)
    return images


def _frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` scaled to ``height`` and padded (replicated edges) or centre-cropped to ``width``."""
    scaled = cv2.resize(image, (round(image.shape[1] * height / image.shape[0]), height), interpolation=cv2.INTER_AREA)
    extra = width - scaled.shape[1]
    if extra >= 0:
        return cv2.copyMakeBorder(scaled, 0, 0, extra // 2, extra - extra // 2, cv2.BORDER_REPLICATE)
    return scaled[:, -extra // 2 : -extra // 2 + width]


def portraits(lfw_count: int = 20) -> dict[str, list[np.ndarray]]:
    """Single-face portraits of 640x490 and 256x256, keyed by size.

    Each size holds the astronaut and Grace Hopper (head and shoulders) and their
    mirror images, then ``lfw_count`` LFW faces (blurry: 25 px originals).
    """
    heads = [data.astronaut()[:392], grace_hopper()[:392]]  # (392, 512, 3): the 640:490 shape around the face
    squares = [data.astronaut()[20:320, 70:370], grace_hopper()[60:460, 56:456]]  # head and shoulders, square
    heads += [image[:, ::-1] for image in heads]
    squares += [image[:, ::-1] for image in squares]
    lfw = lfw_images(lfw_count) if lfw_count else []
    return {
        "640x490": [_frame(image, 640, 490) for image in heads + lfw],
        "256x256": [_frame(image, 256, 256) for image in squares + lfw],
    }


def _sunglasses(image: np.ndarray, eyes: np.ndarray) -> np.ndarray:
    """Dark lenses over both eyes joined by a bridge: the eyes themselves are hidden."""
    image = image.copy()
    distance = float(np.linalg.norm(eyes[1] - eyes[0]))
    axes = (round(0.42 * distance), round(0.3 * distance))
    for eye in eyes.round().astype(int):
        cv2.ellipse(image, tuple(eye), axes, 0, 0, 360, (20, 20, 25), -1)
    cv2.line(
        image,
        tuple(eyes[0].round().astype(int)),
        tuple(eyes[1].round().astype(int)),
        (20, 20, 25),
        max(2, round(0.08 * distance)),
    )
    return image


def group_photo() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A composite group photo, (720, 1280, 3) RGB, and the five faces' boxes (x, y, w, h).

    Not a real group photo (none ships offline): five real faces pasted on a blurred
    real background (``skimage.data.coffee``), faces 90-130 px wide. From left to right:
    the astronaut; Grace Hopper wearing sunglasses; the astronaut mirrored with mouth and chin
    covered by a grey block;
    Grace Hopper mirrored and tilted 10 degrees; the astronaut with sunglasses.
    """
    canvas = cv2.resize(cv2.GaussianBlur(data.coffee(), (0, 0), 6), (1280, 720))
    astronaut, hopper = data.astronaut(), grace_hopper()
    occluded = astronaut[:, ::-1].copy()
    occluded[125:175, 512 - 250 : 512 - 205] = (120, 120, 120)  # a hand-sized block over mouth and chin
    tilted = cv2.warpAffine(
        hopper[:, ::-1].copy(), cv2.getRotationMatrix2D((245.0, 235.0), 10.0, 1.0), (512, 600), borderMode=cv2.BORDER_REPLICATE
    )
    # (source, its face box x, y, w, h in the source, face width wanted on the canvas)
    people = [
        (astronaut, (175, 76, 91, 91), 110),
        (_sunglasses(hopper, HOPPER_EYES), (180, 139, 187, 187), 120),
        (occluded, (512 - 266, 76, 91, 91), 100),
        (tilted, (512 - 367, 139, 187, 187), 125),
        (_sunglasses(astronaut, ASTRONAUT_EYES), (175, 76, 91, 91), 95),
    ]
    boxes = []
    for slot, (source, (x, y, w, h), width) in enumerate(people):
        scale = width / w
        tile_x, tile_y = x - 0.8 * w, y - 0.8 * h  # head and shoulders: 0.8 face widths around the face
        tile = source[max(0, round(tile_y)) : round(y + 2.2 * h), max(0, round(tile_x)) : round(x + 1.8 * w)]
        tile = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        left, top = 20 + 250 * slot, 160 + 60 * (slot % 2)
        tile = tile[: 720 - top, : 1280 - left]
        canvas[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
        face_left = left + (x - max(0, round(tile_x))) * scale
        face_top = top + (y - max(0, round(tile_y))) * scale
        boxes.append((round(face_left), round(face_top), round(w * scale), round(h * scale)))
    return canvas, boxes
