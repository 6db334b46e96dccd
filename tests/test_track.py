"""Video face tracking, detect-every-k against detect-every-frame, the background pipeline and bf16 inference."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data

from auformer.detect import Detector, in_background
from auformer.faces import get_detector
from auformer.faces.track import FaceTracker
from face_photos import grace_hopper
from media import tiny_checkpoint

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
    path = tmp_path_factory.mktemp("video") / "slow.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for frame in moving_head_frames(24, 3.0):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


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
    counts = []
    for frame in [*frames, other, blank, blank]:
        faces = tracker.detect(frame)
        counts.append((len(faces), tracker.detections))
    # detection on frame 0, tracked 1-2; the new face and the empty frames are detected afresh
    assert counts == [(1, 1), (1, 1), (1, 1), (1, 2), (0, 3), (0, 4)]


def test_tracker_without_landmarks_detects_every_frame():
    tracker = FaceTracker(get_detector("haar"), every=5)
    for frame in moving_head_frames(3, 2.0):
        assert len(tracker.detect(frame)) == 1
    assert tracker.detections == 3


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
