"""Face detection and five-point alignment, shared by the dataset converters and ``auformer detect``."""

from auformer.faces.align import TEMPLATE_5PT, TEMPLATE_SIZE, AlignedFace, align_face, align_faces
from auformer.faces.detectors import DEFAULT_DETECTOR, DETECTORS, Face, FaceDetector, get_detector

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "TEMPLATE_5PT",
    "TEMPLATE_SIZE",
    "AlignedFace",
    "Face",
    "FaceDetector",
    "align_face",
    "align_faces",
    "get_detector",
]
