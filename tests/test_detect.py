"""Detector, `auformer detect` and plots on the astronaut photo and a video written by the test."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from skimage import data

import auformer
from auformer.cli import main
from auformer.data.transforms import build_transform
from auformer.detect import Detector, expand_inputs, parse_thresholds, video_frames
from auformer.detect.writers import CsvWriter as _CsvWriter
from auformer.faces import align_faces, get_detector
from media import tiny_checkpoint, write_moving_face_video

AUS = [1, 2, 4, 6, 12]
FACE_FRAMES, BLANK_FRAMES = 6, 3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny random AUFormer marked as trained on the synthetic dataset."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", AUS)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """10 fps MJPEG: the astronaut's head moving right for FACE_FRAMES frames, then BLANK_FRAMES grey frames."""
    return write_moving_face_video(tmp_path_factory.mktemp("video") / "clip.avi", FACE_FRAMES, BLANK_FRAMES)


def test_detect_matches_model_on_aligned_crop(checkpoint):
    detector = Detector(checkpoint)
    with pytest.warns(UserWarning, match="trained on synthetic faces") as said:
        table = detector.detect(data.astronaut())
    assert len(table) == 1 and table.loc[0, "success"] == 1 and detector.synthetic
    detector.detect(data.astronaut())  # once per Detector, as the CLI says it once
    assert len(said) == 1
    crop = align_faces(data.astronaut(), get_detector())[0].crop  # the default detector, as Detector uses
    model = auformer.load_checkpoint(checkpoint).eval()
    transform = build_transform(False, 32, model.data_config["mean"], model.data_config["std"])
    with torch.no_grad():
        expected = torch.sigmoid(model(transform(crop)[None]).logits)[0].numpy()  # (N,)
    probabilities = table.loc[0, ["AU01", "AU02", "AU04", "AU06", "AU12"]].to_numpy(dtype=float)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    np.testing.assert_array_equal(
        table.loc[0, ["AU01_c", "AU02_c", "AU04_c", "AU06_c", "AU12_c"]].to_numpy(dtype=int), (expected >= 0.5).astype(int)
    )
    assert 0.0 < expected.min() < 0.5 < expected.max() < 1.0  # both occurrence values are exercised


def test_thresholds_per_au(checkpoint):
    table = Detector(checkpoint, threshold={"AU12": 0.0, "default": 1.0}).detect(data.astronaut())
    assert table.loc[0, "AU12_c"] == 1 and table.loc[0, ["AU01_c", "AU02_c", "AU04_c", "AU06_c"]].sum() == 0
    with pytest.raises(ValueError, match="AU25"):
        Detector(checkpoint, threshold={"AU25": 0.3})
    assert parse_thresholds(["0.6"]) == 0.6
    assert parse_thresholds(["0.6", "au12=0.4"]) == {"default": 0.6, "AU12": 0.4}
    with pytest.raises(ValueError, match="AU12=high"):
        parse_thresholds(["AU12=high"])


def test_image_without_face_gives_unsuccessful_row(checkpoint):
    table = Detector(checkpoint, face_detector="haar").detect(np.full((120, 160, 3), 90, dtype=np.uint8))
    assert len(table) == 1 and table.loc[0, "success"] == 0
    assert table[["x", "face_score", "AU01"]].isna().all(axis=None) and table["AU01_c"].isna().all()


def test_detect_video_tracks_face_and_reports_blank_frames(checkpoint, video):
    table = Detector(checkpoint, batch_size=2).detect_video(video)
    assert table["frame"].tolist() == list(range(FACE_FRAMES + BLANK_FRAMES))
    assert table["success"].tolist() == [1] * FACE_FRAMES + [0] * BLANK_FRAMES
    np.testing.assert_allclose(table["time_s"], np.arange(FACE_FRAMES + BLANK_FRAMES) / 10.0)
    shifts = np.diff(table["x"].to_numpy()[:FACE_FRAMES])
    assert np.all(np.abs(shifts - 25) < 6)  # the box follows the head, 25 px per frame
    assert [frame.index for frame in video_frames(video, every=2, start=0.2, end=0.7)] == [2, 4, 6]


def test_interrupted_run_keeps_written_batches(checkpoint, video, tmp_path):
    def frames_then_crash():
        for frame in video_frames(video):
            if frame.index == 5:
                raise KeyboardInterrupt
            yield frame

    writer = _CsvWriter(tmp_path / "partial.csv", openface=False)
    with pytest.raises(KeyboardInterrupt):
        for table, _ in Detector(checkpoint, batch_size=2).iter_results(frames_then_crash()):
            writer.write(table)
    assert pd.read_csv(writer.path)["frame"].tolist() == [0, 1, 2, 3]


def test_cli_detect_folder_with_video_and_corrupt_file(checkpoint, video, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    (inputs / "nested").mkdir(parents=True)
    cv2.imwrite(str(inputs / "astronaut.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    (inputs / "nested" / "broken.jpg").write_bytes(b"not a jpeg")
    (inputs / "notes.txt").write_text("ignored")
    (inputs / "nested" / "clip.avi").write_bytes(video.read_bytes())
    out = tmp_path / "out"
    status = main(
        [
            "detect",
            str(inputs),
            "--checkpoint",
            str(checkpoint),
            "--out",
            str(out),
            "--plot",
            "--format",
            "openface",
            "--threshold",
            "0.5",
            "AU12=0.3",
            "--every",
            "3",
            "--skip-bad",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "not meaningful" in printed and "1 unreadable inputs skipped" in printed and "1 files with other extensions" in printed
    assert f"wrote {out / 'images.csv'}" in printed
    images = pd.read_csv(out / "images.csv")
    assert images["success"].tolist() == [1] and images.loc[0, "frame"] == 1  # OpenFace counts frames from 1
    assert {"face_id", "timestamp", "confidence", "AU12", "AU12_c"} <= set(images.columns)
    clip = pd.read_csv(out / "clip.csv")
    assert clip["frame"].tolist() == [1, 4, 7] and clip["success"].tolist() == [1, 1, 0]
    assert (out / "plots" / "astronaut_face0.png").stat().st_size > 10_000
    assert (out / "plots" / "clip_aus.png").stat().st_size > 10_000


def test_missing_input_fails_before_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.png"):
        expand_inputs([tmp_path / "nothing.png"])


def test_iter_results_takes_numpy_frames_as_one_stream(checkpoint):
    """Arrays alone are frames 0, 1, ... of one "<array>" input; they give what Frame objects give."""
    from auformer.detect.sources import Frame

    image = data.astronaut()
    detector = Detector(checkpoint, detect_every=1)
    from_arrays = pd.concat([table for table, _ in detector.iter_results([image, image])], ignore_index=True)
    frames = [Frame("<array>", index, index / 10, image) for index in range(2)]
    from_frames = pd.concat([table for table, _ in detector.iter_results(frames)], ignore_index=True)
    pd.testing.assert_frame_equal(from_arrays, from_frames)
    assert from_arrays["frame"].tolist() == [0, 1] and (from_arrays["input"] == "<array>").all()
