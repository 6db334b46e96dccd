"""Head pose from the 68 landmarks: OpenFace's ``pose_Rx/Ry/Rz`` by a PnP fit of a generic 3D face.

``cv2.solvePnP`` fits the rotation that maps six points of an average 3D head onto their
image positions. The 3D points are written here by hand because no installed package
ships a generic face model: they are the widely used average-head coordinates (mm,
nose tip at the origin) of the learnopencv head-pose tutorial, turned into camera axes
(x right, y down, z away from the camera), so a face looking straight at the camera has
all three angles near 0. The camera is the usual uncalibrated guess: focal length the
image width, principal point the image centre, no lens distortion. Angles are radians in
OpenFace's convention: R = Rx(pitch) @ Ry(yaw) @ Rz(roll).
"""

from __future__ import annotations

import cv2
import numpy as np

POSE_COLUMNS = ["pose_Rx", "pose_Ry", "pose_Rz"]
# iBUG-68 index -> 3D point (x right, y down, z away from the camera; mm).
_MODEL_POINTS = {
    30: (0.0, 0.0, 0.0),  # nose tip
    8: (0.0, 330.0, 65.0),  # chin
    36: (-225.0, -170.0, 135.0),  # outer corner of the eye on the image's left
    45: (225.0, -170.0, 135.0),  # outer corner of the eye on the image's right
    48: (-150.0, 150.0, 125.0),  # mouth corner, image left
    54: (150.0, 150.0, 125.0),  # mouth corner, image right
}
_INDICES = list(_MODEL_POINTS)
_MODEL = np.array(list(_MODEL_POINTS.values()), dtype=np.float64)  # (6, 3)


def head_pose(shape: np.ndarray, image_size: tuple[int, int]) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in radians of a face with (68, 2) landmarks in an image of (height, width)."""
    height, width = image_size
    camera = np.array([[width, 0.0, width / 2], [0.0, width, height / 2], [0.0, 0.0, 1.0]])
    points = np.asarray(shape, dtype=np.float64)[_INDICES]  # (6, 2)
    found, rotation_vector, _ = cv2.solvePnP(_MODEL, points, camera, None, flags=cv2.SOLVEPNP_ITERATIVE)
    if not found:
        return (float("nan"),) * 3
    rotation, _ = cv2.Rodrigues(rotation_vector)  # (3, 3)
    # R = Rx(a) Ry(b) Rz(c): R[0, 2] = sin b, R[1, 2] = -sin a cos b, R[0, 1] = -cos b sin c.
    pitch = np.arctan2(-rotation[1, 2], rotation[2, 2])
    yaw = np.arcsin(np.clip(rotation[0, 2], -1.0, 1.0))
    roll = np.arctan2(-rotation[0, 1], rotation[0, 0])
    return float(pitch), float(yaw), float(roll)
