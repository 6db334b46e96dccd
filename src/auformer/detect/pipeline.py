"""The face pipeline: each frame's faces detected (every K-th frame in a video, tracked between) and aligned.

Stage between a frame source (`auformer.detect.sources`) and the model (`Detector`): it turns
`Frame` s into aligned face crops with stable face numbers, and knows nothing of checkpoints.
Detection, tracking and alignment are `auformer.faces`, the same code the dataset converters use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from auformer.detect.sources import Frame, FrameSource
from auformer.faces import TEMPLATE_SIZE, AlignedFace, Face, FaceDetector, align_faces
from auformer.faces.track import FaceTracker


class FacePipeline:
    """Detect, track and align the faces of a frame stream, one tracker per video.

    ``detect_every``: in videos, faces are detected every that many frames and tracked in
    between (1: detect every frame; `FaceTracker` checks it). Face numbers (`auformer.faces.track`): in a video a face
    keeps its number while it stays in view and a new face gets a number not used before in
    that video; in a photo they are the detector's ranks, best first.

    ``workers``: threads finding faces at once. Each photo (and each video's first frame) is found
    apart from the others, so a folder of photos is spread over the workers; the later frames of a
    video run one after the other (each frame's tracking needs the frame before it), without a
    look-ahead, so `auformer live` takes each frame when it is ready for it. The face detectors that
    say they are ``thread_safe`` release the GIL (YuNet through ctypes), so two workers use two cores;
    others get one worker.
    """

    def __init__(self, face_detector: FaceDetector, detect_every: int = 5, workers: int = 1) -> None:
        self.face_detector = face_detector
        self.detect_every = detect_every
        # One worker for a detector that does not say it may be shared between threads (a user's own: 1).
        self.workers = workers if getattr(face_detector, "thread_safe", False) else 1

    def faces(
        self, frames: FrameSource, carried: Sequence[Face] = (), next_face_id: int = 0
    ) -> Iterator[tuple[Frame, list[AlignedFace]]]:
        """Each frame with its aligned faces (``TEMPLATE_SIZE`` crops), in the order of ``frames``.

        ``carried`` and ``next_face_id`` continue the first video's numbering (a resumed
        run: `auformer.detect.writers.written_faces`); a new input, or a jump back in frame
        numbers, starts numbering from 0.
        """
        pending: deque[tuple[Frame, Future]] = deque()  # new inputs found by the workers, in frame order
        stream = self._trackers(frames, carried, next_face_id)
        with ThreadPoolExecutor(self.workers, thread_name_prefix="auformer-faces") as pool:
            try:
                while True:
                    try:
                        frame, tracker, new = next(stream)
                    except StopIteration:
                        break
                    except Exception:  # the source failed (a video cut short): the frames before it first
                        while pending:
                            yield _oldest(pending)
                        raise
                    if new and self.workers > 1:
                        pending.append((frame, pool.submit(align_faces, frame.image, tracker, TEMPLATE_SIZE)))
                        if len(pending) > 2 * self.workers:  # bounded look-ahead: decoded frames held in memory
                            yield _oldest(pending)
                        continue
                    while pending:  # this frame's tracker may need them (a video's first frame)
                        yield _oldest(pending)
                    yield frame, align_faces(frame.image, tracker, size=TEMPLATE_SIZE)
                while pending:
                    yield _oldest(pending)
            finally:
                for _, future in pending:  # a consumer that stopped early, or an error: drop what is queued
                    future.cancel()

    def _trackers(
        self, frames: FrameSource, carried: Sequence[Face], next_face_id: int
    ) -> Iterator[tuple[Frame, FaceTracker, bool]]:
        """Each frame with the tracker that finds its faces and whether it is new: one for each new input
        (or a jump back in frame numbers)."""
        tracker: FaceTracker | None = None
        previous: Frame | None = None
        for frame in frames:
            new = previous is None or frame.input != previous.input or frame.index <= previous.index
            if new:
                tracker = FaceTracker(self.face_detector, self.detect_every)  # nothing to track from, ids from 0
                if previous is None:
                    tracker.reset(carried, next_face_id)
            yield frame, tracker, new
            previous = frame


def _oldest(pending: deque[tuple[Frame, Future]]) -> tuple[Frame, list[AlignedFace]]:
    """The oldest submitted frame and its faces (waiting for them), taken off ``pending``."""
    frame, future = pending.popleft()
    return frame, future.result()
