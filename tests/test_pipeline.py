"""The face pipeline's workers: photos found at once in several threads give what one thread gives."""

from __future__ import annotations

import os
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from auformer.detect.detector import FACE_WORKERS, Detector
from auformer.detect.pipeline import FacePipeline
from auformer.detect.sources import Frame
from auformer.errors import AUFormerError
from auformer.faces import get_detector
from media import tiny_checkpoint, two_faces_frames

# A segment of the stream: a photo, or a short video in which the heads move a few pixels a frame.
SEGMENTS = st.lists(
    st.tuples(
        st.sampled_from(["photo", "video"]),
        st.integers(1, 4),  # frames (a photo has one)
        st.integers(0, 120),  # the astronaut's left
        st.booleans(),  # Grace Hopper in view
    ),
    min_size=1,
    max_size=6,
)


def stream(segments: list[tuple[str, int, int, bool]]) -> list[Frame]:
    """The frames of ``segments`` in order (each photo and video its own input)."""
    frames = []
    for number, (kind, count, left, hopper) in enumerate(segments):
        count = 1 if kind == "photo" else count
        places = [[(left + 4 * index, 30), (250 - 4 * index, 120) if hopper else None] for index in range(count)]
        images, _ = two_faces_frames(places)
        frames += [Frame(f"{kind}{number}", index, index / 10, image) for index, image in enumerate(images)]
    return frames


def source(frames: list[Frame], fail_after: int | None):
    """``frames`` as a source that, with ``fail_after``, stops with an error after that many (a video cut short)."""
    for index, frame in enumerate(frames):
        if index == fail_after:
            raise AUFormerError("the stream stopped")
        yield frame


def results(pipeline: FacePipeline, frames: list[Frame], fail_after: int | None) -> tuple[list, str | None]:
    """What the pipeline yields (frame, face ids, boxes, scores, crops) and the error it ends with."""
    got = []
    try:
        for frame, aligned in pipeline.faces(source(frames, fail_after)):
            faces = [(face.face.face_id, face.face.box, face.face.score, face.crop.tobytes()) for face in aligned]
            got.append((frame.input, frame.index, faces))
    except AUFormerError as error:
        return got, str(error)
    return got, None


@settings(max_examples=20, deadline=None, database=None)
@given(segments=SEGMENTS, fail_at=st.one_of(st.none(), st.floats(0, 0.99)), workers=st.integers(2, 3))
def test_workers_give_what_one_thread_gives(segments, fail_at, workers):
    """Photos spread over workers and videos tracked in order: the same faces, ids, crops and order as one
    thread, and a source that fails mid-way still yields every frame before the failure, then its error."""
    detector = get_detector("yunet")
    frames = stream(segments)
    fail = None if fail_at is None else int(fail_at * len(frames))  # the source stops before that frame
    expected, expected_error = results(FacePipeline(detector, detect_every=2, workers=1), frames, fail)
    got, error = results(FacePipeline(detector, detect_every=2, workers=workers), frames, fail)
    assert got == expected
    assert error == expected_error
    if fail is not None:
        assert len(got) == fail and error == "the stream stopped"
    assert sum(len(faces) for *_, faces in got) >= len(got)  # the astronaut is found in every frame


def test_photos_run_in_several_threads_and_a_consumer_can_stop_early():
    detector = get_detector("yunet")
    frames = stream([("photo", 1, 10 * index, True) for index in range(12)])
    seen = set()
    detect = detector.detect

    def detect_and_note(image):
        seen.add(threading.current_thread().name)
        return detect(image)

    detector.detect = detect_and_note  # an instance attribute over the method, removed below
    try:
        faces = FacePipeline(detector, workers=2).faces(iter(frames))
        first = [next(faces) for _ in range(3)]
        faces.close()  # the queued photos are dropped, the workers stop
    finally:
        del detector.detect
    assert [frame.input for frame, _ in first] == ["photo0", "photo1", "photo2"]
    assert len({name for name in seen if name.startswith("auformer-faces")}) == 2
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("auformer-faces")]


def test_detectors_unsafe_to_share_get_one_worker(tmp_path):
    """dlib's HOG and OpenCV's cascade may not be shared by threads: the Detector gives them one worker."""
    checkpoint = tiny_checkpoint(tmp_path / "tiny", [1, 2])
    workers = {name: Detector(checkpoint, face_detector=name).pipeline.workers for name in ("yunet", "dlib", "haar", "none")}
    assert workers == {"yunet": FACE_WORKERS, "dlib": 1, "haar": 1, "none": FACE_WORKERS}
    assert FACE_WORKERS == min(4, os.cpu_count() or 1)
