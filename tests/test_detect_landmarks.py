"""What an OpenFace or py-feat user looks for in `detect`: 68 landmark columns, head pose, aligned crops."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from auformer.cli import main
from auformer.detect.detector import LANDMARK_COLUMNS
from auformer.faces import align_faces, get_detector
from auformer.faces.pose import POSE_COLUMNS, head_pose
from face_photos import grace_hopper
from media import tiny_checkpoint

DEGREE = np.pi / 180


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", [1, 2, 12])


def test_landmark_pose_columns_and_aligned_crops_on_a_photo(checkpoint, tmp_path, capsys):
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    out = tmp_path / "out"
    argv = ["detect", str(tmp_path / "astronaut.png"), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*argv, "--landmarks", "--pose", "--save-aligned"]) == 0
    assert f"aligned face crops in {out / 'aligned'}" in capsys.readouterr().out
    table = pd.read_csv(out / "images.csv")
    columns = list(table.columns)
    assert columns[columns.index("success") + 1 :][: 136 + 3] == LANDMARK_COLUMNS + POSE_COLUMNS
    face = get_detector().detect(data.astronaut())[0]
    np.testing.assert_allclose(table.loc[0, LANDMARK_COLUMNS].to_numpy(float), face.shape.T.ravel())
    x, y, w, h = face.box
    assert (x <= table.loc[0, "x_30"] <= x + w) and (y <= table.loc[0, "y_30"] <= y + h)  # the nose tip inside the box
    crop = np.asarray(Image.open(out / "aligned" / "astronaut_frame0_face0.png"))
    np.testing.assert_array_equal(crop, align_faces(data.astronaut(), get_detector())[0].crop)  # what the model saw
    assert main([*argv]) == 2  # the crops are results: a second run into OUT is refused like the CSV
    assert "already holds results" in capsys.readouterr().err


def test_box_only_detector_leaves_the_columns_empty(checkpoint, tmp_path):
    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    argv = ["detect", str(tmp_path / "astronaut.png"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    assert main([*argv, "--landmarks", "--pose", "--face-detector", "none"]) == 0
    table = pd.read_csv(tmp_path / "out" / "images.csv")
    assert table.loc[0, "success"] == 1 and table[LANDMARK_COLUMNS + POSE_COLUMNS].isna().all(axis=None)


def _pose(image: np.ndarray) -> np.ndarray:
    return np.array(head_pose(get_detector().detect(image)[0].shape, image.shape[:2]))


@pytest.mark.parametrize("photo", [data.astronaut, grace_hopper])
def test_pose_mirrors_and_rolls_with_the_image(photo):
    """A mirrored face turns and rolls the other way at the same pitch; an image turned by theta rolls by -theta."""
    image = photo()
    pose = _pose(image)
    mirrored = _pose(np.ascontiguousarray(image[:, ::-1]))
    np.testing.assert_allclose(mirrored, pose * [1, -1, -1], atol=4 * DEGREE)
    for degrees in (-20, 12):
        height, width = image.shape[:2]
        turned = cv2.warpAffine(image, cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0), (width, height))
        assert _pose(turned)[2] == pytest.approx(pose[2] - degrees * DEGREE, abs=5 * DEGREE)
