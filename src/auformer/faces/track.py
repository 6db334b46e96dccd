"""Face tracking in video: detect every k-th frame, re-fit the landmarks of the tracked faces in between.

Between detections each face's box is followed by template matching (the face's grey
square from the previous frame, shrunk to 24 px, searched in a window three boxes
wide), and dlib's shape predictor re-fits the five points on the moved box (a few ms
a face, against 12-26 ms of CPU for a YuNet detection and more for dlib's HOG). Two checks
keep a track honest: the aligned face must still look like the face at its last
detection (normalised cross-correlation of 32x32 grey crops), else the frame is
detected afresh; and every ``every``-th frame is detected anyway, which also finds
faces that entered the picture.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from auformer.errors import AUFormerError
from auformer.faces.align import TEMPLATE_5PT, TEMPLATE_SIZE, similarity_matrix, warp
from auformer.faces.detectors import Face, FaceDetector, LandmarkFitter, _landmark_fitter, check_image

PATCH_SIZE = 32  # side of the grey crops compared to tell a tracked face from a lost one
TEMPLATE_SIDE = 24  # side in pixels of the face square matched between frames (coarse: landmarks refine it)


def face_patch(image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(PATCH_SIZE**2,) the face aligned to the template at 32x32, grey, zero mean and unit norm (0 if flat)."""
    matrix = similarity_matrix(np.asarray(landmarks, dtype=np.float64), TEMPLATE_5PT * (PATCH_SIZE / TEMPLATE_SIZE))
    patch = cv2.cvtColor(warp(image_rgb, matrix, PATCH_SIZE), cv2.COLOR_RGB2GRAY).astype(np.float64).ravel()
    patch -= patch.mean()
    norm = np.linalg.norm(patch)
    return patch / norm if norm > 1e-6 else patch


@dataclass
class _Track:
    detected: Face  # the face at its last detection
    image: np.ndarray | None  # (H, W, 3) the detection frame, until reference and template are taken from it
    reference: np.ndarray | None = None  # (PATCH_SIZE**2,) face_patch at the detection
    landmarks: np.ndarray | None = None  # (5, 2) in the latest frame
    template: np.ndarray | None = None  # (TEMPLATE_SIDE, TEMPLATE_SIDE) uint8 grey face square of the latest frame

    def start(self) -> None:
        """Take reference and template from the detection frame: only once the face is followed (not for photos)."""
        if self.image is not None:
            landmarks = self.detected.landmarks
            self.reference, self.template = face_patch(self.image, landmarks), face_template(self.image, landmarks)
            self.landmarks, self.image = landmarks, None


def _grey_square(image_rgb: np.ndarray, box: tuple[float, float, float, float], scale: float) -> tuple[np.ndarray, int, int]:
    """Grey crop of ``box`` (clipped to the image) resized by ``scale``, and the crop's top-left corner."""
    x, y, w, h = box
    left, top = max(0, round(x)), max(0, round(y))
    right, bottom = min(image_rgb.shape[1], round(x + w)), min(image_rgb.shape[0], round(y + h))
    crop = cv2.cvtColor(image_rgb[top : max(top + 1, bottom), left : max(left + 1, right)], cv2.COLOR_RGB2GRAY)
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_AREA), left, top


def face_template(image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(TEMPLATE_SIDE, TEMPLATE_SIDE) uint8 grey square around the face (``LandmarkFitter.box_around``)."""
    box = LandmarkFitter.box_around(landmarks)
    square, _, _ = _grey_square(image_rgb, box, TEMPLATE_SIDE / box[2])
    return cv2.resize(square, (TEMPLATE_SIDE, TEMPLATE_SIDE), interpolation=cv2.INTER_AREA)


def template_shift(image_rgb: np.ndarray, landmarks: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(2,) x, y shift of the face since ``template`` was taken, found in a window three face boxes wide."""
    x, y, side, _ = LandmarkFitter.box_around(landmarks)
    scale = TEMPLATE_SIDE / side
    window, left, top = _grey_square(image_rgb, (x - side, y - side, 3 * side, 3 * side), scale)
    if window.shape[0] < TEMPLATE_SIDE or window.shape[1] < TEMPLATE_SIDE:
        return np.zeros(2)  # the face is at the image border: let the landmark fit alone follow it
    scores = cv2.matchTemplate(window, template, cv2.TM_CCOEFF_NORMED)  # (Wh - T + 1, Ww - T + 1)
    _, _, _, (best_x, best_y) = cv2.minMaxLoc(scores)
    return np.array([left + best_x / scale - x, top + best_y / scale - y])


class FaceTracker:
    """A face detector for consecutive video frames: ``detect`` on each frame in order.

    Frames ``0, every, 2 * every, ...`` after a detection are detected with ``detector``;
    the frames between re-fit each face's landmarks from the previous frame and move its
    box with them (box and score otherwise those of the last detection). A detection is
    also run at once when a tracked face no longer matches its detected look
    (``min_similarity``), when no face is tracked, and for box-only detectors (``haar``,
    ``none``), which give no landmarks to track. ``every=1`` detects every frame.
    Call ``reset`` between videos.
    """

    def __init__(self, detector: FaceDetector, every: int = 5, min_similarity: float = 0.6) -> None:
        if every < 1:
            raise AUFormerError(f"detect_every must be a positive integer, got {every}")
        self.detector = detector
        self.name = detector.name
        self.box_crop = detector.box_crop
        self.every = every
        self.min_similarity = min_similarity  # the same face under a new expression stays above ~0.8
        self.fitter: LandmarkFitter | None = None  # loaded at the first trackable detection (haar/none never need it)
        self.tracks: list[_Track] = []
        self.since_detection = 0
        self.detections = 0  # full detections run, for the benchmark and the tests

    def reset(self) -> None:
        """Forget the tracked faces: the next frame is detected."""
        self.tracks, self.since_detection = [], 0

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in this frame, best first (the order of the last detection)."""
        image_rgb = check_image(image_rgb)
        self.since_detection += 1
        if self.tracks and self.since_detection < self.every:
            faces = [self._follow(track, image_rgb) for track in self.tracks]
            if all(face is not None for face in faces):
                return faces
        return self._detect(image_rgb)

    def _detect(self, image_rgb: np.ndarray) -> list[Face]:
        faces = self.detector.detect(image_rgb)
        self.detections += 1
        self.since_detection = 0
        trackable = self.every > 1 and all(face.landmarks is not None for face in faces)
        if trackable and self.fitter is None:
            self.fitter = _landmark_fitter()
        self.tracks = [_Track(face, image_rgb) for face in faces] if trackable else []
        return faces

    def _follow(self, track: _Track, image_rgb: np.ndarray) -> Face | None:
        """The tracked face in this frame, or None when it no longer looks like the detected one."""
        track.start()
        landmarks = track.landmarks + template_shift(image_rgb, track.landmarks, track.template)  # (5, 2) moved
        for _ in range(2):  # the second fit starts from a box centred on the re-fitted face
            landmarks = self.fitter.fit(image_rgb, LandmarkFitter.box_around(landmarks))
        if float(face_patch(image_rgb, landmarks) @ track.reference) < self.min_similarity:
            return None
        track.landmarks, track.template = landmarks, face_template(image_rgb, landmarks)
        # Move the detected box with the landmarks: same similarity transform (scale and shift).
        matrix = similarity_matrix(np.asarray(track.detected.landmarks, dtype=np.float64), landmarks.astype(np.float64))
        x, y, w, h = track.detected.box
        scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        centre = matrix @ np.array([x + w / 2, y + h / 2, 1.0])  # (2,)
        box = (float(centre[0] - scale * w / 2), float(centre[1] - scale * h / 2), scale * w, scale * h)
        return Face(box=box, score=track.detected.score, landmarks=landmarks)
