"""Video face tracking and identities, detect-every-k against detect-every-frame, the background pipeline and bf16."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from auformer.detect import Detector, in_background, written_faces
from auformer.errors import AUFormerError
from auformer.faces import Face, get_detector
from auformer.faces.detectors import BoxCrop
from auformer.faces.track import FaceTracker, box_iou
from face_photos import grace_hopper
from media import crossing_faces, tiny_checkpoint, two_faces_frames, write_video

AUS = [1, 2, 4, 6, 12]


def moving_head_frames(count: int, step: float, size: int = 120) -> list[np.ndarray]:
    """(240, 320, 3) RGB frames: the astronaut's head sliding right ``step`` px a frame and bobbing 2 px."""
    head = cv2.resize(data.astronaut()[30:230, 120:320], (size, size), interpolation=cv2.INTER_AREA)
    frames = []
    for index in range(count):
        frame = np.full((240, 320, 3), 190, dtype=np.uint8)
        shift = np.float32([[1, 0, 10 + step * index], [0, 1, 50 + 2 * np.sin(index / 3)]])
        frames.append(cv2.warpAffine(head, shift, (320, 240), dst=frame, borderMode=cv2.BORDER_TRANSPARENT))
    return frames


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", AUS)


@pytest.fixture(scope="module")
def slow_video(tmp_path_factory) -> Path:
    """25 fps MJPEG, 24 frames, the head moving 3 px a frame (a slow head turn or walk)."""
    return write_video(tmp_path_factory.mktemp("video") / "slow.avi", moving_head_frames(24, 3.0), fps=25.0)


CROSSING_FRAMES = 20


@pytest.fixture(scope="module")
def crossing_video(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """10 fps MJPEG: the astronaut and Grace Hopper cross and swap sides, both in full view (`crossing_faces`)."""
    frames, centres = crossing_faces(CROSSING_FRAMES, gap=100)
    return write_video(tmp_path_factory.mktemp("video") / "crossing.avi", frames), centres


def person_of(box: tuple[float, float, float, float], centres: np.ndarray) -> int:
    """0 (astronaut) or 1 (Hopper): whose drawn head ``centres`` (2, 2) is nearer the box centre."""
    x, y, w, h = box
    return int(np.nanargmin(np.linalg.norm(centres - [x + w / 2, y + h / 2], axis=1)))


def test_tracker_keeps_the_box_on_a_moving_face():
    frames = moving_head_frames(20, 8.0)  # fast: 8 px a frame on a 120 px head
    truth = [get_detector().detect(frame)[0] for frame in frames]
    tracker = FaceTracker(get_detector(), every=10)
    tracked = [tracker.detect(frame) for frame in frames]
    assert tracker.detections == 2  # frames 0 and 10; the 18 others were tracked
    for faces, expected in zip(tracked, truth):
        assert len(faces) == 1
        np.testing.assert_allclose(faces[0].box, expected.box, atol=4.0)
        np.testing.assert_allclose(faces[0].landmarks, expected.landmarks, atol=3.0)
    assert tracked[9][0].box[0] - tracked[1][0].box[0] == pytest.approx(64.0, abs=4.0)


def test_tracker_detects_again_when_the_face_changes_or_leaves():
    frames = moving_head_frames(3, 2.0)
    hopper = cv2.resize(grace_hopper()[100:400, 100:400], (160, 160), interpolation=cv2.INTER_AREA)
    other = np.full((240, 320, 3), 190, dtype=np.uint8)
    other[40:200, 10:170] = hopper  # another person where the astronaut was
    blank = np.full((240, 320, 3), 190, dtype=np.uint8)
    tracker = FaceTracker(get_detector(), every=10)
    counts, ids = [], []
    for frame in [*frames, other, blank, blank]:
        faces = tracker.detect(frame)
        counts.append((len(faces), tracker.detections))
        ids.append([face.face_id for face in faces])
    # detection on frame 0, tracked 1-2; the new face and the empty frames are detected afresh
    assert counts == [(1, 1), (1, 1), (1, 1), (1, 2), (0, 3), (0, 4)]
    # Hopper, in the astronaut's place (the boxes overlap), is a new face: overlap alone carries no id over
    assert ids == [[0], [0], [0], [1], [], []]


def test_tracker_without_landmarks_detects_every_frame():
    tracker = FaceTracker(get_detector("haar"), every=5)
    for frame in moving_head_frames(3, 2.0):
        assert [face.face_id for face in tracker.detect(frame)] == [0]  # matched by the look of its box
    assert tracker.detections == 3


def test_the_whole_frame_is_one_face_with_one_id():
    tracker = FaceTracker(get_detector("none"), every=5)  # aligned crops: each frame looks different, still one face
    frames = np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    assert [[face.face_id for face in tracker.detect(frame)] for frame in frames] == [[0]] * 4


@pytest.mark.parametrize("every", [1, 5])
def test_faces_keep_their_ids_when_they_cross(checkpoint, crossing_video, every):
    path, centres = crossing_video
    table = Detector(checkpoint, detect_every=every, batch_size=8).detect_video(path)
    # one row per face in every frame: none dropped, none twice
    assert table["success"].all() and table.groupby("frame").size().tolist() == [2] * CROSSING_FRAMES
    people = []
    for row in table.itertuples():
        distances = np.linalg.norm(centres[row.frame] - [row.x + row.w / 2, row.y + row.h / 2], axis=1)  # (2,)
        assert distances.min() < 15 and distances.max() > 80  # on a face, and clearly on one of the two
        people.append(int(distances.argmin()))
    # each face has one id for the whole video (the ranks by score change at frames 1, 4 and 14)
    assert sorted(set(zip(people, table["face"]))) == [(0, 0), (1, 1)]


@pytest.mark.parametrize("every", [1, 5])
def test_a_face_hidden_for_a_moment_takes_its_id_back(every):
    frames, centres = crossing_faces(CROSSING_FRAMES, gap=40)  # Hopper passes behind the astronaut
    tracker = FaceTracker(get_detector(), every=every)
    owner: dict[int, int] = {}  # face id -> person
    hopper_ids = []
    for index, frame in enumerate(frames):
        faces = tracker.detect(frame)
        people = [person_of(face.box, centres[index]) for face in faces]
        assert len(set(people)) == len(people)  # never two rows for one face
        for face, person in zip(faces, people):
            assert owner.setdefault(face.face_id, person) == person  # an id never moves to the other face
        hopper_ids.append([face.face_id for face, person in zip(faces, people) if person == 1])
    assert [face_id for face_id, person in owner.items() if person == 0] == [0]
    # Hopper is hidden at frames 9-10 and half hidden around them (new ids there may come and go);
    # once in full view again she has her id back
    assert hopper_ids[:7] == [[1]] * 7 and hopper_ids[-6:] == [[1]] * 6


def test_a_face_entering_between_detections_is_found_at_the_next_one():
    # the astronaut moves right, Grace Hopper appears at frame 2, between the detections of frames 0 and 5
    places = [[(20 + 6 * index, 40), (240, 120) if index >= 2 else None] for index in range(10)]
    frames, _ = two_faces_frames(places)
    tracker = FaceTracker(get_detector(), every=5)
    ids = [[face.face_id for face in tracker.detect(frame)] for frame in frames]
    assert ids == [[0]] * 5 + [[0, 1]] * 5
    assert tracker.detections == 2


def test_a_face_that_leaves_as_another_enters_gets_a_new_id():
    # the astronaut leaves at frame 3 as Hopper comes in elsewhere, between two scheduled detections
    places = [[(20 + 6 * index, 40), None] if index < 3 else [None, (240, 120)] for index in range(8)]
    frames, _ = two_faces_frames(places)
    tracker = FaceTracker(get_detector(), every=5)
    ids = [[face.face_id for face in tracker.detect(frame)] for frame in frames]
    assert ids == [[0]] * 3 + [[1]] * 5  # the astronaut's id 0 is not handed on
    assert tracker.detections == 2  # frame 0, and frame 3 where the astronaut could no longer be followed


class ScriptedDetector:
    """A box-only detector that returns given boxes, one list per frame."""

    name = "scripted"
    box_crop = BoxCrop(scale=1.0, shift_y=0.0)

    def __init__(self, boxes: list[list[tuple[float, float, float, float]]]) -> None:
        self.frames = iter(boxes)

    def detect(self, image_rgb: np.ndarray) -> list[Face]:
        return [Face(box=box, score=1.0, landmarks=None) for box in next(self.frames)]


BOXES = st.lists(
    st.tuples(*[st.integers(0, 120)] * 2, *[st.integers(8, 60)] * 2).map(lambda box: tuple(map(float, box))), max_size=4
)


@settings(max_examples=60, deadline=None, database=None)
@given(frames=st.lists(BOXES, min_size=1, max_size=12), seed=st.integers(0, 3))
def test_identities_are_unique_never_reused_and_never_two_on_one_face(frames, seed):
    image = np.random.default_rng(seed).integers(0, 256, (180, 180, 3), dtype=np.uint8)  # every box looks different
    tracker = FaceTracker(ScriptedDetector(frames), every=1, patience=3)
    last_seen: dict[int, int] = {}  # id -> frame
    for index, boxes in enumerate(frames):
        faces = tracker.detect(image)
        ids = [face.face_id for face in faces]
        assert ids == sorted(set(ids))  # unique, in id order
        for face in faces:
            if face.face_id in last_seen:
                assert index - last_seen[face.face_id] <= 1 + tracker.patience  # an ended id never comes back
            else:
                assert face.face_id == len(last_seen)  # new ids count up from 0 in order of appearance
            last_seen[face.face_id] = index
        assert all(box_iou(a.box, b.box) <= tracker.duplicate_iou for a in faces for b in faces if a is not b)
        # nothing is dropped but a box on a face that is shown
        assert all(any(box_iou(box, face.box) > tracker.duplicate_iou or box == face.box for face in faces) for box in boxes)
    # after a reset (a photo), the ids are the detector's ranks (of the boxes kept, in the detector's order)
    first = FaceTracker(ScriptedDetector(frames[:1]), every=1).detect(image)
    detected = iter(frames[0])
    assert [face.face_id for face in first] == list(range(len(first))) and all(face.box in detected for face in first)


def test_resumed_video_continues_the_face_ids(checkpoint, crossing_video, tmp_path):
    from auformer.cli import main

    path, _ = crossing_video
    arguments = [str(path), "--checkpoint", str(checkpoint), "--detect-every", "1"]
    assert main(["detect", *arguments, "--out", str(tmp_path / "full")]) == 0
    full = pd.read_csv(tmp_path / "full" / "crossing.csv")
    (tmp_path / "cut").mkdir()
    full[full["frame"] < 8].to_csv(tmp_path / "cut" / "crossing.csv", index=False)  # a run killed after frame 7
    shutil.copy(tmp_path / "full" / "detect.json", tmp_path / "cut")  # what wrote it (checked by --resume)
    assert written_faces(tmp_path / "cut" / "crossing.csv") == (
        [
            Face(box=tuple(row[["x", "y", "w", "h"]]), score=0.0, landmarks=None, face_id=row["face"])
            for _, row in full[full["frame"] == 7].iterrows()
        ],
        2,
    )
    assert main(["detect", *arguments, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    resumed = pd.read_csv(tmp_path / "cut" / "crossing.csv")
    assert resumed["frame"].tolist() == full["frame"].tolist() and resumed["face"].tolist() == full["face"].tolist()
    bad = tmp_path / "bad.csv"
    bad.write_text("input,frame,face,x,y,w,h\nclip.avi,0,zero,1,2,3,4\n")
    with pytest.raises(AUFormerError, match="bad.csv: cannot continue its face numbering"):
        written_faces(bad)


def test_detect_every_k_matches_every_frame_on_a_slow_video(checkpoint, slow_video):
    every_frame = Detector(checkpoint, detect_every=1, batch_size=8).detect_video(slow_video)
    every_eighth = Detector(checkpoint, detect_every=8, batch_size=8).detect_video(slow_video)
    assert every_frame["success"].all() and every_eighth["success"].all() and len(every_eighth) == 24
    boxes = ["x", "y", "w", "h"]
    # YuNet's own boxes jitter by a few pixels from frame to frame: within a tenth of the 52-65 px box
    assert (every_frame[boxes] - every_eighth[boxes]).abs().to_numpy().max() < 0.1 * every_frame["w"].min()
    columns = [f"AU{au:02d}" for au in AUS]
    assert (every_frame[columns] - every_eighth[columns]).abs().to_numpy().max() < 0.05
    detected = every_eighth["frame"] % 8 == 0
    np.testing.assert_allclose(every_frame.loc[detected, columns], every_eighth.loc[detected, columns], atol=1e-6)


def test_bf16_matches_fp32(checkpoint):
    image = data.astronaut()
    fp32 = Detector(checkpoint).detect(image)
    bf16 = Detector(checkpoint, amp="bf16").detect(image)
    columns = [f"AU{au:02d}" for au in AUS]
    np.testing.assert_allclose(bf16[columns].to_numpy(dtype=float), fp32[columns].to_numpy(dtype=float), atol=0.03)
    with pytest.raises(ValueError, match="amp must be one of none, bf16"):
        Detector(checkpoint, amp="fp8")


def test_background_keeps_order_reraises_and_stops():
    def items():
        yield from range(5)
        raise KeyboardInterrupt

    seen = []
    with pytest.raises(KeyboardInterrupt):
        seen.extend(in_background(items(), depth=2))
    assert seen == [0, 1, 2, 3, 4]

    closed = []

    def endless():
        try:
            number = 0
            while True:
                yield number
                number += 1
        finally:
            closed.append(True)

    stream = in_background(endless(), depth=3)
    assert [next(stream) for _ in range(4)] == [0, 1, 2, 3]
    stream.close()  # the consumer stops early: the worker stops and closes its generator
    assert closed == [True]


def test_cli_detect_every_and_bf16(checkpoint, slow_video, tmp_path, capsys):
    from auformer.cli import main

    out = tmp_path / "out"
    assert (
        main(
            [
                "detect",
                str(slow_video),
                "--checkpoint",
                str(checkpoint),
                "--out",
                str(out),
                "--detect-every",
                "6",
                "--amp",
                "bf16",
                "--batch-size",
                "5",
            ]
        )
        == 0
    )
    assert f"wrote {out / 'slow.csv'}" in capsys.readouterr().out
    table = pd.read_csv(out / "slow.csv")
    assert table["frame"].tolist() == list(range(24)) and table["success"].all()


@pytest.mark.parametrize("openface", [False, True])
def test_time_series_draws_one_line_per_face(openface):
    from auformer.detect import to_openface
    from auformer.viz import au_timeseries_figure

    # face 0 in frames 0-3; face 3 (in front of it by score) in frames 1-2; frame 4 without a face
    table = pd.DataFrame(
        {
            "input": "clip.avi",
            "frame": [0, 1, 1, 2, 2, 3, 4],
            "time_s": [0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.4],
            "face": pd.array([0, 3, 0, 3, 0, 0, None], dtype="Int64"),
            "AU12": [0.1, 0.9, 0.2, 0.8, 0.3, 0.4, None],
        }
    )
    figure = au_timeseries_figure(to_openface(table) if openface else table, 0.5)
    lines = {line.get_label(): line.get_ydata() for line in figure.axes[0].get_lines() if line.get_label().startswith("face")}
    assert list(lines) == ["face 0", "face 3"]
    np.testing.assert_array_equal(lines["face 0"], [0.1, 0.2, 0.3, 0.4, np.nan])
    np.testing.assert_array_equal(lines["face 3"], [np.nan, 0.9, 0.8, np.nan, np.nan])


@pytest.mark.parametrize("faceless", [[3, 4], [0, 2, 3], [1]])
def test_each_faceless_frame_is_its_own_tenth_of_a_second(faceless):
    """At 10 fps, K frames without a face are hatched over K / 10 s; the title names only what the table has."""
    from auformer.viz import au_timeseries_figure

    frames = np.arange(6)
    table = pd.DataFrame(
        {
            "frame": frames,
            "time_s": frames / 10,
            "face": pd.array([None if f in faceless else 0 for f in frames], dtype="Int64"),
            "AU12": [np.nan if f in faceless else 0.5 for f in frames],
        }
    )
    figure = au_timeseries_figure(table, 0.5)
    hatched = [patch for patch in figure.axes[0].patches if patch.get_hatch() == "//"]
    assert sum(patch.get_width() for patch in hatched) == pytest.approx(len(faceless) / 10)
    title = figure._suptitle.get_text()
    assert "intensity" not in title and "\n" in title  # no intensity curve to speak of; two short lines, not cut off
