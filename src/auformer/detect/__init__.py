"""AU detection on photos, folders and videos, in stages: frame sources, face pipeline, Detector, writers, runner.

`auformer.detect.sources` yields `Frame` s, `auformer.detect.pipeline` finds, tracks and aligns
their faces, the `Detector` (`auformer.detect.detector`) runs the checkpoint on the crops and
builds the result table, `auformer.detect.writers` writes CSVs that a killed run resumes, and
`auformer.detect.runner` is ``auformer detect``. This package exports what users and the
other commands import.
"""

from auformer.detect.corpus import detect_corpus, merge
from auformer.detect.detector import Detector, parse_thresholds
from auformer.detect.runner import run_detect
from auformer.detect.sources import (
    Frame,
    count_video_frames,
    expand_inputs,
    in_background,
    read_image,
    video_frames,
)
from auformer.detect.writers import to_openface, written_faces

__all__ = [
    "Detector",
    "Frame",
    "count_video_frames",
    "detect_corpus",
    "expand_inputs",
    "in_background",
    "merge",
    "parse_thresholds",
    "read_image",
    "run_detect",
    "to_openface",
    "video_frames",
    "written_faces",
]
