"""Five-point similarity alignment of faces to a fixed template.

The dataset converters and ``auformer detect`` both call ``align_faces``, so a
model sees faces cropped exactly as in training.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from auformer.faces.detectors import Face, FaceDetector, check_image

# The ArcFace/insightface 112x112 five-point template (left eye, right eye, nose tip,
# left and right mouth corner) is cropped for recognition: tight, chin at the border.
# AU detection needs brows and chin inside the test-time 224 centre crop, so the
# template is placed on a 128x128 canvas (8 px margin left and right, 0 above, 16
# below) and scaled x2 to 256 px: eyes at y~103, mouth at y~185, inter-ocular ~70 px.
_ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64
)
TEMPLATE_SIZE = 256
TEMPLATE_5PT: np.ndarray = (_ARCFACE_112 + [8.0, 0.0]) * 2.0  # (5, 2) x, y in a 256x256 crop


@dataclass
class AlignedFace:
    """A face cropped and aligned for the model."""

    crop: np.ndarray  # (size, size, 3) uint8 RGB
    face: Face
    matrix: np.ndarray  # (2, 3) affine map image -> crop


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """(2, 3) least-squares similarity (rotation, uniform scale, shift) mapping ``source`` points onto ``target``.

    Hand-written (closed form with complex numbers, 4 lines) because
    ``cv2.estimateAffinePartial2D`` is a robust estimator that may drop landmarks
    as outliers, and scikit-image is not a run-time dependency.
    """
    src = source[:, 0] + 1j * source[:, 1]  # (P,) points as complex numbers
    dst = target[:, 0] + 1j * target[:, 1]
    src_centred, dst_centred = src - src.mean(), dst - dst.mean()
    rotation_scale = (dst_centred * src_centred.conj()).sum() / (np.abs(src_centred) ** 2).sum()  # a in dst = a * src + b
    shift = dst.mean() - rotation_scale * src.mean()
    a, b = rotation_scale.real, rotation_scale.imag
    return np.array([[a, -b, shift.real], [b, a, shift.imag]], dtype=np.float64)


def box_matrix(face: Face, detector: FaceDetector, size: int) -> np.ndarray:
    """(2, 3) scale + shift mapping the detector's square crop around ``face.box`` onto ``size`` pixels."""
    x, y, w, h = face.box
    side = detector.box_crop.scale * max(w, h)
    centre_x, centre_y = x + w / 2, y + h / 2 + detector.box_crop.shift_y * h
    scale = size / side
    # The box is in pixel edges, matrices act on pixel centres (index i is at edge i + 0.5).
    shift_x, shift_y = scale * (side / 2 - centre_x + 0.5) - 0.5, scale * (side / 2 - centre_y + 0.5) - 0.5
    return np.array([[scale, 0.0, shift_x], [0.0, scale, shift_y]], dtype=np.float64)


def align_face(image_rgb: np.ndarray, face: Face, detector: FaceDetector, size: int = TEMPLATE_SIZE) -> AlignedFace:
    """Crop one face: similarity transform of its landmarks to the template, else a box crop."""
    if face.landmarks is not None:
        matrix = similarity_matrix(np.asarray(face.landmarks, dtype=np.float64), TEMPLATE_5PT * (size / TEMPLATE_SIZE))
    else:
        matrix = box_matrix(face, detector, size)
    return AlignedFace(crop=warp(image_rgb, matrix, size), face=face, matrix=matrix)


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """(size, size, ...) ``image`` mapped by the (2, 3) similarity ``matrix``, without aliasing."""
    # Bilinear warpAffine aliases when it shrinks: first shrink the image with area
    # averaging to the crop's resolution, then warp (rotation, shift) at about 1:1.
    shrink = min(1.0, float(np.hypot(matrix[0, 0], matrix[1, 0])))
    source = cv2.resize(image, None, fx=shrink, fy=shrink, interpolation=cv2.INTER_AREA) if shrink < 1.0 else image
    # cv2.resize maps pixel centres: x = (x_small + 0.5) / shrink - 0.5
    offset = np.full(2, 0.5 / shrink - 0.5)
    source_matrix = np.c_[matrix[:, :2] / shrink, matrix[:, 2] + matrix[:, :2] @ offset]  # (2, 3) shrunk image -> crop
    return cv2.warpAffine(source, source_matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def align_faces(image_rgb: np.ndarray, detector: FaceDetector, size: int = TEMPLATE_SIZE) -> list[AlignedFace]:
    """Detect and align every face of a uint8 (H, W, 3) RGB image, best first."""
    image_rgb = check_image(image_rgb)
    return [align_face(image_rgb, face, detector, size) for face in detector.detect(image_rgb)]
