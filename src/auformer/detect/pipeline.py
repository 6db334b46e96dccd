"""The face pipeline: each frame's faces detected (every K-th frame in a video, tracked between) and aligned.

Stage between a frame source (`auformer.detect.sources`) and the model (`Detector`): it turns
`Frame` s into aligned face crops with stable face numbers, and knows nothing of checkpoints.
Detection, tracking and alignment are `auformer.faces`, the same code the dataset converters use.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from auformer.detect.sources import Frame, FrameSource
from auformer.faces import TEMPLATE_SIZE, AlignedFace, Face, FaceDetector, align_faces
from auformer.faces.track import FaceTracker


class FacePipeline:
    """Detect, track and align the faces of a frame stream, one tracker per video.

    ``detect_every``: in videos, faces are detected every that many frames and tracked in
    between (1: detect every frame; `FaceTracker` checks it). Face numbers (`auformer.faces.track`): in a video a face
    keeps its number while it stays in view and a new face gets a number not used before in
    that video; in a photo they are the detector's ranks, best first.
    """

    def __init__(self, face_detector: FaceDetector, detect_every: int = 5) -> None:
        self.face_detector = face_detector
        self.detect_every = detect_every

    def faces(
        self, frames: FrameSource, carried: Sequence[Face] = (), next_face_id: int = 0
    ) -> Iterator[tuple[Frame, list[AlignedFace]]]:
        """Each frame with its aligned faces (``TEMPLATE_SIZE`` crops).

        ``carried`` and ``next_face_id`` continue the first video's numbering (a resumed
        run: `auformer.detect.writers.written_faces`); a new input, or a jump back in frame
        numbers, starts numbering from 0.
        """
        tracker = FaceTracker(self.face_detector, self.detect_every)
        previous: Frame | None = None
        for frame in frames:
            if previous is None:
                tracker.reset(carried, next_face_id)
            elif frame.input != previous.input or frame.index <= previous.index:
                tracker.reset()  # a new photo or video (or a jump back): nothing to track from, ids from 0
            yield frame, align_faces(frame.image, tracker, size=TEMPLATE_SIZE)
            previous = frame
