"""The synthetic AU face generator: determinism, AU regions, label statistics, file format."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from auformer.cli import main
from auformer.data.manifest import read_folds, read_manifest
from auformer.data.synthetic import (
    OCCURRENCE_RATES,
    flip_labels,
    generate_synthetic,
    sample_au_labels,
    synthetic_folds,
    write_synthetic,
)
from auformer.data.synthetic_appearance import LANDMARK_NAMES, SYNTHETIC_AUS
from auformer.data.synthetic_drawing import IDENTITY_RANGES, LATENT_NAMES, render_faces

NEUTRAL_IMAGE = {
    "yaw": 0.0,
    "rotation": 0.0,
    "scale": 1.0,
    "shift_x": 0.0,
    "shift_y": 0.0,
    "light_x": 0.0,
    "light_y": 0.0,
    "brightness": 1.0,
    "blur": 0.0,
    "noise": 0.0,
    "background": 0.5,
}


@pytest.fixture(scope="module")
def small() -> object:
    return generate_synthetic(num_images=60, size=48, seed=3, num_subjects=6)


def test_deterministic_by_seed(small):
    again = generate_synthetic(num_images=60, size=48, seed=3, num_subjects=6)
    other = generate_synthetic(num_images=60, size=48, seed=4, num_subjects=6)
    assert np.array_equal(small.images, again.images) and np.array_equal(small.labels, again.labels)
    assert small.subjects == again.subjects and np.array_equal(small.latents, again.latents)
    assert not np.array_equal(small.images, other.images)
    assert small.images.shape == (60, 48, 48, 3) and small.images.dtype == np.uint8
    assert small.labels.shape == (60, 12) and small.labels.dtype == np.float32
    assert small.landmarks.shape == (60, len(LANDMARK_NAMES), 2) and small.latents.shape == (60, len(LATENT_NAMES))
    assert sorted(set(small.subjects)) == [f"S{i:03d}" for i in range(6)]


def test_label_noise_changes_labels_only(small):
    noisy = generate_synthetic(num_images=60, size=48, seed=3, num_subjects=6, label_noise=0.3)
    assert np.array_equal(noisy.images, small.images) and np.array_equal(noisy.clean_labels, small.clean_labels)
    flipped = (noisy.labels != noisy.clean_labels).mean()
    assert 0.22 < flipped < 0.38
    with pytest.raises(ValueError, match="label_noise"):
        generate_synthetic(num_images=4, size=32, label_noise=1.5)


def test_flip_rate():
    labels = np.zeros((20000, 12), np.float32)
    flipped = flip_labels(np.random.default_rng(0), labels, 0.1)
    assert abs(flipped.mean() - 0.1) < 0.005


def test_occurrence_rates_and_cooccurrence():
    labels = sample_au_labels(np.random.default_rng(0), 40000)
    rates = labels.mean(0)
    for j, au in enumerate(SYNTHETIC_AUS):
        assert abs(rates[j] - OCCURRENCE_RATES[au]) < 0.015, au
    col = {au: labels[:, j].astype(bool) for j, au in enumerate(SYNTHETIC_AUS)}
    assert col[12][col[6]].mean() > col[12].mean() + 0.15  # smiles: AU6 with AU12
    assert col[2][col[1]].mean() > col[2].mean() + 0.2  # brow raise: AU1 with AU2
    assert col[26][col[25]].mean() > col[26].mean() + 0.1  # open mouth: AU25 with AU26


def _neutral_latents(small, count: int) -> np.ndarray:
    latents = np.repeat(small.latents[:1], count, 0)
    for name, value in NEUTRAL_IMAGE.items():
        latents[:, LATENT_NAMES.index(name)] = value
    return latents


# Image rows each AU may change in an upright face, from the neutral face's landmarks: "brows" =
# above the eye centres, "upper" = above the nose tip (AU4's frown lines reach between the eyes),
# "eyes" = brows to nose tip, "eyes_cheeks" = brows to mouth, "lower" = below the eye centres.
AU_REGIONS = {
    1: "brows",
    2: "brows",
    4: "upper",
    6: "eyes_cheeks",
    7: "eyes",
    10: "lower",
    12: "lower",
    14: "lower",
    15: "lower",
    17: "lower",
    25: "lower",
    26: "lower",
}


def test_each_au_changes_its_region(small):
    size = 96
    latents = _neutral_latents(small, 1 + len(SYNTHETIC_AUS))
    intensities = np.vstack([np.zeros(12), np.eye(12)]).astype(np.float32)  # neutral, then one AU at a time
    images, landmarks = render_faces(latents, intensities, size)
    assert np.array_equal(render_faces(latents, intensities, size)[0], images)  # pure function without rng
    marks = dict(zip(LANDMARK_NAMES, landmarks[0] * size))
    eye_y = marks["eye_right_inner"][1]
    brow_y = min(marks[f"brow_{side}_{part}"][1] for side in ("left", "right") for part in ("inner", "middle", "outer"))
    nose_y = marks["nose_tip"][1]
    mouth_y = marks["mouth_right"][1]
    bands = {
        "brows": (0, eye_y - 2),
        "upper": (0, nose_y),
        "eyes": (brow_y - 2, nose_y),
        "eyes_cheeks": (brow_y - 2, mouth_y),
        "lower": (eye_y + 2, size),
    }
    for j, au in enumerate(SYNTHETIC_AUS):
        changed = np.abs(images[1 + j].astype(int) - images[0].astype(int)).max(-1) > 12  # (S, S)
        rows = np.nonzero(changed)[0]
        assert len(rows) > 15, f"AU{au} changes too few pixels"
        low, high = bands[AU_REGIONS[au]]
        inside = ((rows >= low) & (rows <= high)).mean()
        assert inside > 0.97, f"AU{au}: {inside:.2f} of the changed pixels inside its region"


def test_landmarks_follow_the_action(small):
    latents = _neutral_latents(small, 3)
    intensities = np.zeros((3, 12), np.float32)
    intensities[1, SYNTHETIC_AUS.index(1)] = 1.0
    intensities[2, SYNTHETIC_AUS.index(12)] = 1.0
    _, landmarks = render_faces(latents, intensities, 64)
    inner = LANDMARK_NAMES.index("brow_right_inner")
    corner = LANDMARK_NAMES.index("mouth_right")
    assert landmarks[1, inner, 1] < landmarks[0, inner, 1] - 0.02  # AU1 raises the inner brow
    assert landmarks[2, corner, 1] < landmarks[0, corner, 1] - 0.01  # AU12 lifts the lip corner
    assert (small.landmarks > 0).all() and (small.landmarks < 1).all()


def test_identity_is_fixed_per_subject(small):
    identity = small.latents[:, : len(IDENTITY_RANGES)]
    subjects = np.array(small.subjects)
    for subject in set(small.subjects):
        rows = identity[subjects == subject]
        assert np.allclose(rows, rows[0])
    assert len({tuple(identity[subjects == s][0]) for s in set(small.subjects)}) == 6


def test_folds_subject_exclusive():
    subjects = [f"S{i % 7:03d}" for i in range(50)]
    folds = synthetic_folds(subjects, k=3)
    assert folds == synthetic_folds(list(reversed(subjects)), k=3)
    assert sorted(s for fold in folds for s in fold) == sorted(set(subjects))
    with pytest.raises(ValueError, match="k="):
        synthetic_folds(subjects, k=8)


def test_bad_render_input():
    with pytest.raises(ValueError, match="latents"):
        render_faces(np.zeros((2, 3)), np.zeros((2, 12)))


def test_written_dataset_reads_back(tmp_path, small):
    out = write_synthetic(tmp_path / "synth", num_images=60, size=48, seed=3, num_subjects=6, label_noise=0.1)
    table = read_manifest(out)
    data = generate_synthetic(num_images=60, size=48, seed=3, num_subjects=6, label_noise=0.1)
    assert table.aus == SYNTHETIC_AUS and table.subjects == data.subjects
    assert np.array_equal(table.labels, data.labels)
    pixels = cv2.cvtColor(cv2.imread(str(table.image_path(5))), cv2.COLOR_BGR2RGB)
    assert np.array_equal(pixels, data.images[5])  # PNG is lossless
    folds, aus = read_folds(out / "folds.json")
    assert aus == SYNTHETIC_AUS and folds == synthetic_folds(data.subjects, 3)
    extras = np.load(out / "synthetic.npz")
    assert np.array_equal(extras["clean_labels"], data.clean_labels)


def test_cli_synth(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "s"), "--num-images", "12", "--size", "32", "--num-subjects", "4"]) == 0
    assert str(tmp_path / "s") in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "s")) == 12
    assert main(["synth", str(tmp_path / "t"), "--num-images", "12", "--size", "8"]) == 2
