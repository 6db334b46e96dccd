"""Pluggable face detectors that run offline on CPU: ``dlib`` (default), ``haar``, ``none``.

Every backend ships its weights inside a pip wheel, so nothing is downloaded at
run time:

- ``dlib``: dlib's HOG + linear SVM frontal face detector (built into ``dlib-bin``)
  and the 68-point shape predictor of ``face-recognition-models``, reduced to the
  five alignment points. Measured on ``skimage.data.lfw_subset()`` (upscaled, see
  docs/detect.md): 93% of faces found, 100% of non-faces rejected.
- ``haar``: OpenCV's Viola-Jones frontal face cascade (``cv2.data.haarcascades``).
  Boxes only, no landmarks, so faces are aligned from the box.
- ``none``: the whole image is the face (inputs that are already aligned crops).

A detector is anything with a ``name``, a ``box_crop`` and
``detect(image_rgb) -> list[Face]``; ``get_detector(name)`` builds the built-in ones.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from auformer.errors import AUFormerError

# The five alignment points, in this order (image left/right, not the person's):
# left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")


@dataclass
class Face:
    """One detected face."""

    box: tuple[float, float, float, float]  # x, y, w, h in pixels
    score: float  # backend confidence, higher is surer (dlib: SVM margin; haar: cascade level weight)
    landmarks: np.ndarray | None  # (5, 2) x, y in LANDMARK_NAMES order, or None for box-only backends


@dataclass(frozen=True)
class BoxCrop:
    """How a backend's boxes relate to an aligned crop, for faces without landmarks.

    The crop is a square of side ``scale * max(w, h)`` centred ``shift_y * h`` below the
    box centre. Boxes differ between backends (Haar boxes include the forehead, dlib
    boxes stop at the brows), so each backend carries its own framing, calibrated so
    that box crops frame the face like landmark crops (median over the astronaut and
    the LFW subset faces, docs/detect.md).
    """

    scale: float
    shift_y: float


class FaceDetector(Protocol):
    name: str
    box_crop: BoxCrop

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in a uint8 (H, W, 3) RGB image, best first."""
        ...


def check_image(image_rgb: np.ndarray) -> np.ndarray:
    """Return ``image_rgb`` as a contiguous uint8 (H, W, 3) array or raise ``ValueError``."""
    if not isinstance(image_rgb, np.ndarray) or image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        shape = getattr(image_rgb, "shape", None)
        dtype = getattr(image_rgb, "dtype", type(image_rgb).__name__)
        raise AUFormerError(f"expected a uint8 RGB image of shape (H, W, 3), got shape {shape} and dtype {dtype}")
    return np.ascontiguousarray(image_rgb)


class WholeImageDetector:
    """``none``: the whole image is one face (for inputs that are already face crops)."""

    name = "none"
    box_crop = BoxCrop(scale=1.0, shift_y=0.0)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        height, width = check_image(image_rgb).shape[:2]
        return [Face(box=(0.0, 0.0, float(width), float(height)), score=1.0, landmarks=None)]


class HaarDetector:
    """OpenCV's frontal face Haar cascade: fast, boxes only (no landmarks)."""

    name = "haar"
    box_crop = BoxCrop(scale=1.45, shift_y=0.0)

    def __init__(self, min_neighbors: int = 5, min_size: int = 30) -> None:
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise FileNotFoundError(f"{path}: OpenCV Haar cascade missing (opencv-python-headless<5 ships it)")
        self.min_neighbors = min_neighbors
        self.min_size = min_size

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        gray = cv2.cvtColor(check_image(image_rgb), cv2.COLOR_RGB2GRAY)
        boxes, _, weights = self.cascade.detectMultiScale3(
            gray, scaleFactor=1.1, minNeighbors=self.min_neighbors, minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )  # boxes (F, 4) x, y, w, h; weights (F,)
        faces = [Face(box=tuple(float(v) for v in box), score=float(weight), landmarks=None)
                 for box, weight in zip(boxes, weights)]
        return sorted(faces, key=lambda face: face.score, reverse=True)


def _face_recognition_models_file(name: str) -> Path:
    """Path of a model file in ``face-recognition-models`` without importing it.

    Its ``__init__`` imports ``pkg_resources``, which recent setuptools no longer
    ships, so the package is located with ``importlib.util.find_spec`` instead.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("face-recognition-models is not installed: pip install face-recognition-models==0.3.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model file missing from face-recognition-models")
    return path


class DlibDetector:
    """dlib's HOG face detector plus its 68-point shape predictor, reduced to 5 points."""

    name = "dlib"
    box_crop = BoxCrop(scale=1.5, shift_y=-0.08)

    def __init__(self, upsample: int = 1, min_score: float = 0.2) -> None:
        import dlib  # lazy: only this backend needs it

        self.face_detector = dlib.get_frontal_face_detector()
        self.shape_predictor = dlib.shape_predictor(str(_face_recognition_models_file("shape_predictor_68_face_landmarks.dat")))
        self.upsample = upsample  # each upsampling doubles the image: finds faces down to ~40 px instead of ~80 px
        self.min_score = min_score  # 0.2 rejects a badge on the astronaut's suit (0.12)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        image_rgb = check_image(image_rgb)
        rects, scores, _ = self.face_detector.run(image_rgb, self.upsample, self.min_score)
        faces = []
        for rect, score in sorted(zip(rects, scores), key=lambda pair: pair[1], reverse=True):
            shape = self.shape_predictor(image_rgb, rect)
            points = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)  # (68, 2)
            landmarks = np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])  # (5, 2)
            box = (float(rect.left()), float(rect.top()), float(rect.width()), float(rect.height()))
            faces.append(Face(box=box, score=float(score), landmarks=landmarks))
        return faces


DETECTORS: dict[str, type] = {"dlib": DlibDetector, "haar": HaarDetector, "none": WholeImageDetector}
DEFAULT_DETECTOR = "dlib"


@functools.cache
def get_detector(name: str = DEFAULT_DETECTOR) -> FaceDetector:
    """The face detector called ``name`` (built once per process and shared: loading dlib takes ~1 s)."""
    if name not in DETECTORS:
        raise AUFormerError(f"unknown face detector {name!r}: valid names are {', '.join(DETECTORS)}")
    return DETECTORS[name]()
