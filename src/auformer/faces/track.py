"""Faces in video: each keeps an identity (``face_id``) while it stays in view; detected every k-th frame, followed in between.

Identities. At every detection the detected faces are matched one-to-one to the faces
being tracked: `scipy.optimize.linear_sum_assignment` minimises the summed cost
``(1 - IoU of the boxes) + (1 - appearance similarity)`` over the pairs that look alike
(similarity >= ``min_similarity``). A matched face keeps its track's id; a detection
that matches nothing starts a new id (a counter never reused within a video); a track
that matches nothing is set aside as lost, can be matched again for ``patience``
frames (a face hidden for a moment, a detector miss), then ends. Appearance is the
normalised cross-correlation of 32x32 grey crops of the face aligned on its landmarks
(of its box for box-only detectors): 0.999 for the astronaut moved 75 px, 0.36 for
Grace Hopper against the astronaut. A face is compared with its looks at its last
``GALLERY`` detections, so a face that was half hidden for a few detections is still
recognised by how it looked before. Overlap alone never carries an id over: a cut to
another person framed the same way must not continue the first person's series, so a
face too changed to look like itself (half hidden, turned away) gets a new id instead,
the safe failure. The exceptions are faces whose look is not compared: those carried
over from a resumed run (their look was not stored) and the whole frame of the ``none``
detector (one face, always the same), matched by overlap (``OVERLAP_IOU``).

Why an assignment solver and not ByteTrack (``supervision``): ByteTrack matches by box
overlap alone, so two faces of one size that cross can swap ids, and ``supervision``
requires ``opencv-python``, which clashes with our ``opencv-python-headless`` in one
environment; scipy is already installed (by scikit-learn), and the cost matrix is a
few lines.

Following between detections. Each face's box is followed by template matching (the
face's grey square from the previous frame, shrunk to 24 px, searched in a window three
boxes wide), and dlib's shape predictor re-fits the five points on the moved box (a few
ms a face, against 12-26 ms of CPU for a YuNet detection and more for dlib's HOG).
The aligned face must still look like the face at its last detection (the similarity
above), else the frame is detected afresh. Every ``every``-th frame is detected anyway,
which also finds faces that entered the picture.

Two tracks never sit on one face: of two detections whose boxes overlap by more than
``duplicate_iou`` only the better is kept (so the matching, one-to-one, gives each face
one track), and when two followed boxes overlap that much, the younger track (higher
id) is set aside as lost and the older keeps the face.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from auformer.errors import AUFormerError
from auformer.faces.align import TEMPLATE_5PT, TEMPLATE_SIZE, similarity_matrix, warp
from auformer.faces.detectors import Face, FaceDetector, LandmarkFitter, WholeImageDetector, _landmark_fitter, check_image

PATCH_SIZE = 32  # side of the grey crops compared to tell one face from another
TEMPLATE_SIDE = 24  # side in pixels of the face square matched between frames (coarse: landmarks refine it)
# Box overlap that continues a face whose look is not compared: carried over from a resumed run
# (look unknown), or the whole frame of the ``none`` detector (one face, always the same).
OVERLAP_IOU = 0.5
GALLERY = 8  # looks kept per face: a face half hidden for a few frames is still recognised by its earlier looks
UNMATCHED = 1e6  # cost of a pair that may not match: the solver pairs as many allowed pairs as it can


def _unit(grey: np.ndarray) -> np.ndarray:
    """(P,) ``grey`` flattened to zero mean and unit norm (0 if flat): dot products are correlations."""
    patch = grey.astype(np.float64).ravel()
    patch -= patch.mean()
    norm = np.linalg.norm(patch)
    return patch / norm if norm > 1e-6 else patch


def face_patch(image_rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(PATCH_SIZE**2,) the face aligned to the template at 32x32, grey, zero mean and unit norm (0 if flat)."""
    matrix = similarity_matrix(np.asarray(landmarks, dtype=np.float64), TEMPLATE_5PT * (PATCH_SIZE / TEMPLATE_SIZE))
    return _unit(cv2.cvtColor(warp(image_rgb, matrix, PATCH_SIZE), cv2.COLOR_RGB2GRAY))


def appearance(image_rgb: np.ndarray, face: Face) -> np.ndarray:
    """(PATCH_SIZE**2,) what a face looks like: `face_patch` on its landmarks, else its box's grey crop at 32x32."""
    if face.landmarks is not None:
        return face_patch(image_rgb, face.landmarks)
    square, _, _ = _grey_square(image_rgb, face.box, 1.0)
    return _unit(cv2.resize(square, (PATCH_SIZE, PATCH_SIZE), interpolation=cv2.INTER_AREA))


def box_iou(first: tuple[float, float, float, float], second: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    width = min(first[0] + first[2], second[0] + second[2]) - max(first[0], second[0])
    height = min(first[1] + first[3], second[1] + second[3]) - max(first[1], second[1])
    overlap = max(0.0, width) * max(0.0, height)
    union = first[2] * first[3] + second[2] * second[3] - overlap
    return overlap / union if union > 0 else 0.0


@dataclass
class _Track:
    face: Face  # in the latest frame where it was found, ``face_id`` set
    detected: Face  # the face at its last detection
    image: np.ndarray | None  # (H, W, 3) the detection frame, until its look and template are taken from it
    seen: int  # the tracker's frame count when the face was last found
    looks: np.ndarray | None = None  # (G, PATCH_SIZE**2) appearance at its last G <= GALLERY detections, newest last
    landmarks: np.ndarray | None = None  # (5, 2) in the latest frame
    template: np.ndarray | None = None  # (TEMPLATE_SIDE, TEMPLATE_SIDE) uint8 grey face square of the latest frame

    def gallery(self) -> np.ndarray | None:
        """``looks``, the first taken from the detection frame once needed (never for photos); None: unknown (carried)."""
        if self.looks is None and self.image is not None:
            self.looks = appearance(self.image, self.detected)[None]
        return self.looks

    def similarity(self, look: np.ndarray) -> float:
        """How much ``look`` (PATCH_SIZE**2,) looks like this face: the best correlation with its looks (NaN: unknown)."""
        looks = self.gallery()
        return float(np.max(looks @ look)) if looks is not None else np.nan

    def start(self) -> None:
        """Take the template (and the looks) from the detection frame, once the face is followed."""
        if self.template is None:
            self.gallery()
            self.landmarks = self.detected.landmarks
            self.template = face_template(self.image, self.landmarks)
            self.image = None


def _grey_square(image_rgb: np.ndarray, box: tuple[float, float, float, float], scale: float) -> tuple[np.ndarray, int, int]:
    """Grey crop of ``box`` (clipped to the image) resized by ``scale``, and the crop's top-left corner."""
    x, y, w, h = box
    left, top = min(max(0, round(x)), image_rgb.shape[1] - 1), min(max(0, round(y)), image_rgb.shape[0] - 1)
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

    Every face returned carries a ``face_id`` that stays with it while it is in view
    (module docstring); faces come in ``face_id`` order. After a ``reset`` ids start at
    0, so on a single photo they are the detector's ranks, best first. Frames ``0,
    every, 2 * every, ...`` after a detection are detected with ``detector``; the frames
    between re-fit each face's landmarks from the previous frame and move its box with
    them (box and score otherwise those of the last detection). A detection is also run
    at once when a followed face no longer matches its detected look
    (``min_similarity``), when no face is in view, and for box-only detectors (``haar``,
    ``none``), which give no landmarks to follow. ``every=1`` detects every frame.
    Call ``reset`` between videos.
    """

    def __init__(
        self,
        detector: FaceDetector,
        every: int = 5,
        min_similarity: float = 0.6,
        duplicate_iou: float = 0.5,
        patience: int = 10,
    ) -> None:
        if every < 1:
            raise AUFormerError(f"detect_every must be a positive integer, got {every}")
        self.detector = detector
        self.name = detector.name
        self.box_crop = detector.box_crop
        self.every = every
        self.min_similarity = min_similarity  # the same face under a new expression stays above ~0.8
        self.duplicate_iou = duplicate_iou  # boxes overlapping more are one face: the younger track gives way
        self.patience = patience  # frames a lost face can still take its id back
        self.by_look = detector.name != WholeImageDetector.name  # ``none``: the whole frame, one face always the same
        self.fitter: LandmarkFitter | None = None  # loaded at the first followable detection (haar/none never need it)
        self.detections = 0  # full detections run, for the benchmark and the tests
        self.reset()

    def reset(self, carried: Sequence[Face] = (), next_id: int = 0) -> None:
        """Forget the tracked faces (a new video): the next frame is detected and ids start at ``next_id``.

        ``carried``: faces with their ``face_id`` from the last frame of a resumed run; a
        detection overlapping one by ``OVERLAP_IOU`` continues its id.
        """
        self.tracks: list[_Track] = []  # found in the latest frame, by face_id
        self.lost: list[_Track] = [_Track(face, face, None, seen=0) for face in carried]  # matchable, not shown
        self.next_id = max([next_id, *(face.face_id + 1 for face in carried)])
        self.frame = 0  # frames seen since the reset
        self.since_detection = 0
        self.following = False  # whether the faces of the last detection can be followed (landmarks, every > 1)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Faces in this frame, in ``face_id`` order."""
        image_rgb = check_image(image_rgb)
        self.frame += 1
        self.since_detection += 1
        if self.following and self.tracks and self.since_detection < self.every:
            faces = [self._follow(track, image_rgb) for track in self.tracks]
            if all(face is not None for face in faces):
                for track, face in zip(self.tracks, faces):
                    track.face, track.seen = face, self.frame
                # Two followed boxes on one face: the younger track gives way (set aside, matchable again).
                self.tracks, doubles = self._apart(self.tracks, lambda track: track.face.box)
                self.lost += doubles
                return [track.face for track in self.tracks]
        return self._detect(image_rgb)

    def _detect(self, image_rgb: np.ndarray) -> list[Face]:
        """Detect, then match the detections to the tracks (found or lost) one-to-one; the rest start new ids."""
        detections, _ = self._apart(self.detector.detect(image_rgb), lambda face: face.box)  # one box a face, the best
        self.detections += 1
        self.since_detection = 0
        self.following = self.every > 1 and all(face.landmarks is not None for face in detections)
        if self.following and self.fitter is None:
            self.fitter = _landmark_fitter()
        candidates = self.tracks + self.lost
        compare = candidates and self.by_look
        looks = [appearance(image_rgb, face) if compare else None for face in detections]
        pairs = dict(self._match(candidates, detections, looks))  # detection index -> track index
        tracks = []
        for index, (face, look) in enumerate(zip(detections, looks)):
            gallery = None if look is None else look[None]  # (G, PATCH_SIZE**2)
            if index in pairs:
                track = candidates[pairs[index]]
                face_id = track.face.face_id
                if track.looks is not None:  # None: a carried face, look unknown
                    gallery = np.concatenate([track.looks, gallery])[-GALLERY:]
            else:
                face_id, self.next_id = self.next_id, self.next_id + 1
            face = dataclasses.replace(face, face_id=face_id)
            tracks.append(_Track(face, face, image_rgb, self.frame, looks=gallery))
        matched = set(pairs.values())
        self.lost = [
            track for index, track in enumerate(candidates) if index not in matched and self.frame - track.seen <= self.patience
        ]
        self.tracks = sorted(tracks, key=lambda track: track.face.face_id)
        return [track.face for track in self.tracks]

    def _match(self, tracks: list[_Track], detections: list[Face], looks: list) -> list[tuple[int, int]]:
        """(detection, track) index pairs: one-to-one, alike, with the least summed cost (module docstring)."""
        if not tracks or not detections:
            return []
        iou = np.array([[box_iou(track.face.box, face.box) for face in detections] for track in tracks])  # (T, D)
        similarity = np.full(iou.shape, np.nan)  # (T, D); NaN: not compared (a carried face, detector none)
        if self.by_look:
            similarity = np.array([[track.similarity(look) for look in looks] for track in tracks])
        allowed = np.where(np.isnan(similarity), iou >= OVERLAP_IOU, similarity >= self.min_similarity)
        cost = np.where(allowed, (1 - iou) + (1 - np.nan_to_num(similarity)), UNMATCHED)
        from scipy.optimize import linear_sum_assignment  # lazy: 0.5 s to import, and a photo never matches

        rows, columns = linear_sum_assignment(cost)
        return [(column, row) for row, column in zip(rows, columns) if allowed[row, column]]

    def _apart(self, items: list, box_of: Callable) -> tuple[list, list]:
        """``items`` split into those whose box overlaps no earlier one kept by more than ``duplicate_iou``, and the rest."""
        kept, doubles = [], []
        for item in items:
            overlaps = any(box_iou(box_of(item), box_of(other)) > self.duplicate_iou for other in kept)
            (doubles if overlaps else kept).append(item)
        return kept, doubles

    def _follow(self, track: _Track, image_rgb: np.ndarray) -> Face | None:
        """The tracked face in this frame, or None when it no longer looks like the detected one."""
        track.start()
        landmarks = track.landmarks + template_shift(image_rgb, track.landmarks, track.template)  # (5, 2) moved
        for _ in range(2):  # the second fit starts from a box centred on the re-fitted face
            shape = self.fitter.fit_shape(image_rgb, LandmarkFitter.box_around(landmarks))  # (68, 2)
            landmarks = LandmarkFitter.five_points(shape)
        if track.similarity(face_patch(image_rgb, landmarks)) < self.min_similarity:
            return None
        track.landmarks, track.template = landmarks, face_template(image_rgb, landmarks)
        # Move the detected box with the landmarks: same similarity transform (scale and shift).
        matrix = similarity_matrix(np.asarray(track.detected.landmarks, dtype=np.float64), landmarks.astype(np.float64))
        x, y, w, h = track.detected.box
        scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        centre = matrix @ np.array([x + w / 2, y + h / 2, 1.0])  # (2,)
        box = (float(centre[0] - scale * w / 2), float(centre[1] - scale * h / 2), scale * w, scale * h)
        return dataclasses.replace(track.detected, box=box, landmarks=landmarks, shape=shape)
