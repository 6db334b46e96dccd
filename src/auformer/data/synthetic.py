"""The synthetic AU dataset, the embedded default: labels, subjects and images, in memory or as a prepared folder.

Real AU datasets (BP4D, DISFA, CASME II) need a licence, so ``auformer train``
with no data runs on faces drawn here (`synthetic_drawing`, `synthetic_appearance`).
Subjects are fixed identity parameters (head shape, skin, hair, eyes, nose, mouth);
each image adds pose, lighting, blur and noise jitter. Labels follow BP4D-like
occurrence rates with co-occurrences (AU6 with AU12, AU1 with AU2, ...) and can be
flipped at a configurable rate to exercise the MDWA margin.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import cv2
import numpy as np
from tqdm import tqdm

from auformer.aus import INTENSITY_MAX, au_columns
from auformer.data.manifest import AUTable, write_folds, write_manifest
from auformer.data.synthetic_appearance import LANDMARK_NAMES, SYNTHETIC_AUS
from auformer.data.synthetic_drawing import IDENTITY_RANGES, IMAGE_RANGES, LATENT_NAMES, render_faces
from auformer.errors import AUFormerError
from auformer.files import atomic_path, atomic_write_text

# Occurrence rates: BP4D's for its AUs (1..17), DISFA-like for 25 and 26.
OCCURRENCE_RATES: dict[int, float] = {
    1: 0.21,
    2: 0.17,
    4: 0.20,
    6: 0.46,
    7: 0.55,
    10: 0.59,
    12: 0.56,
    14: 0.46,
    15: 0.17,
    17: 0.34,
    25: 0.30,
    26: 0.15,
}

# Co-occurrence as a Gaussian copula: each AU's latent score is a weighted sum of
# a few expression factors plus its own noise, thresholded at its rate. Loadings
# (squares summing to <= 1 per AU) set how strongly AUs co-occur.
EXPRESSION_FACTORS: dict[str, dict[int, float]] = {
    "smile": {6: 0.7, 12: 0.8, 10: 0.4, 14: 0.3, 7: 0.3, 25: 0.3},
    "brow_raise": {1: 0.8, 2: 0.8, 26: 0.3, 25: 0.2},
    "frown": {4: 0.7, 7: 0.5, 10: 0.3, 17: 0.3},
    "sad": {15: 0.7, 17: 0.6, 1: 0.3, 14: 0.2},
    "mouth_open": {25: 0.8, 26: 0.7},
}

ACTIVE_INTENSITY = (0.8, 1.0)  # an active AU's intensity is drawn uniformly from this range (weaker ones
# made the default 3,000-image run unlearnable in a few CPU minutes: a small CNN stayed near the label prior)


@dataclass
class SyntheticData:
    """A generated dataset, all arrays aligned on the first axis (M images)."""

    images: np.ndarray  # (M, S, S, 3) uint8 RGB
    labels: np.ndarray  # (M, 12) float32 0/1 after label noise, columns SYNTHETIC_AUS
    subjects: list[str]  # M subject ids "S000", ...
    clean_labels: np.ndarray  # (M, 12) float32 0/1 before label noise
    landmarks: np.ndarray  # (M, K, 2) float32 in [0, 1] image coords (x, y), see LANDMARK_NAMES
    latents: np.ndarray  # (M, L) float32 identity, pose and lighting parameters, see LATENT_NAMES
    intensities: np.ndarray  # (M, 12) float32 drawn AU intensity on the FACS 0-5 scale (0 = absent), no label noise


# ---------------------------------------------------------------- labels


def sample_au_labels(rng: np.random.Generator, num_images: int) -> np.ndarray:
    """AU occurrences (M, 12) float32 with OCCURRENCE_RATES marginals and factor co-occurrences."""
    loadings = np.array([[EXPRESSION_FACTORS[f].get(au, 0.0) for f in EXPRESSION_FACTORS] for au in SYNTHETIC_AUS])
    own_std = np.sqrt(1.0 - (loadings**2).sum(1))  # keeps each score N(0, 1)
    factors = rng.standard_normal((num_images, len(EXPRESSION_FACTORS)))
    scores = factors @ loadings.T + rng.standard_normal((num_images, len(SYNTHETIC_AUS))) * own_std
    thresholds = np.array([NormalDist().inv_cdf(1.0 - OCCURRENCE_RATES[au]) for au in SYNTHETIC_AUS])
    return (scores > thresholds).astype(np.float32)


def flip_labels(rng: np.random.Generator, labels: np.ndarray, rate: float) -> np.ndarray:
    """Flip each 0/1 label independently with probability ``rate`` (simulated annotation noise)."""
    if not 0.0 <= rate <= 1.0:
        raise AUFormerError(f"label_noise must be in [0, 1], got {rate}")
    flips = rng.random(labels.shape) < rate
    return np.where(flips, 1.0 - labels, labels).astype(np.float32)


def _uniform(rng: np.random.Generator, ranges: dict[str, tuple[float, float]], count: int) -> np.ndarray:
    """Columns drawn uniformly from each (low, high) range: (count, len(ranges))."""
    low, high = np.array(list(ranges.values())).T
    return (low + (high - low) * rng.random((count, len(ranges)))).astype(np.float32)


def generate_synthetic(
    num_images: int = 3000,
    size: int = 64,
    seed: int = 0,
    num_subjects: int = 60,
    label_noise: float = 0.0,
    progress: bool = False,
) -> SyntheticData:
    """Generate an in-memory synthetic AU dataset, deterministic by seed.

    Subjects get equal shares of the images. Labels, identities, poses and pixel
    noise use separate random streams, so ``label_noise`` changes labels only and
    never the images.
    """
    if num_images < 1 or num_subjects < 1:
        raise AUFormerError(f"num_images and num_subjects must be >= 1, got {num_images} and {num_subjects}")
    if not 16 <= size <= 1024:
        raise AUFormerError(f"size must be between 16 and 1024 pixels, got {size}")
    label_rng, identity_rng, image_rng, noise_rng, flip_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    clean = sample_au_labels(label_rng, num_images)
    intensities = clean * label_rng.uniform(*ACTIVE_INTENSITY, clean.shape).astype(np.float32)
    subject_index = image_rng.permutation(np.arange(num_images) % num_subjects)
    identities = _uniform(identity_rng, IDENTITY_RANGES, num_subjects)
    latents = np.concatenate([identities[subject_index], _uniform(image_rng, IMAGE_RANGES, num_images)], 1)
    images, landmarks = render_faces(latents, intensities, size, noise_rng, progress)
    return SyntheticData(
        images=images,
        labels=flip_labels(flip_rng, clean, label_noise),
        subjects=[f"S{i:03d}" for i in subject_index],
        clean_labels=clean,
        landmarks=landmarks,
        latents=latents,
        intensities=INTENSITY_MAX * intensities,  # drawn 0-1 -> the FACS 0-5 scale
    )


def synthetic_folds(subjects: list[str], k: int = 3) -> list[list[str]]:
    """Subject-exclusive test folds: sorted unique subjects dealt round-robin into k folds."""
    unique = sorted(set(subjects))
    if not 2 <= k <= len(unique):
        raise AUFormerError(f"need 2 <= k <= number of subjects ({len(unique)}), got k={k}")
    return [unique[fold::k] for fold in range(k)]


def write_synthetic(
    out_dir: str | Path,
    num_images: int = 3000,
    size: int = 64,
    seed: int = 0,
    num_subjects: int = 60,
    label_noise: float = 0.0,
    num_folds: int = 3,
) -> Path:
    """Write a synthetic dataset as a prepared dataset folder and return the folder.

    Layout (the same as real prepared data, see docs/architecture.md):
    ``images/000000.png ...``, ``manifest.csv`` (``image,subject,AU01,...``, the
    labels after label noise, then ``AU01_int,...``, the drawn 0-5 intensities), ``folds.json`` (subject-exclusive folds), plus
    ``synthetic.npz`` (clean_labels, landmarks, latents, in manifest order) and
    ``synthetic.json`` (the generator settings).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    data = generate_synthetic(num_images, size, seed, num_subjects, label_noise, progress=True)
    folds = synthetic_folds(data.subjects, num_folds)  # validates num_folds before any file is written
    names = [f"images/{i:06d}.png" for i in range(num_images)]
    for name, image in zip(tqdm(names, desc="writing PNGs", unit="img"), data.images):
        if not cv2.imwrite(str(out / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"could not write {out / name}")
    extras = out / "synthetic.npz"
    with atomic_path(extras) as tmp:
        np.savez(
            tmp,
            clean_labels=data.clean_labels,
            landmarks=data.landmarks,
            latents=data.latents,
            landmark_names=np.array(LANDMARK_NAMES),
            latent_names=np.array(LATENT_NAMES),
        )
    settings = {
        "generator": "auformer.data.synthetic",
        "num_images": num_images,
        "size": size,
        "seed": seed,
        "num_subjects": num_subjects,
        "label_noise": label_noise,
        "aus": au_columns(SYNTHETIC_AUS),
    }
    atomic_write_text(out / "synthetic.json", json.dumps(settings, indent=2) + "\n")
    write_folds(out, folds, SYNTHETIC_AUS)
    write_manifest(AUTable(out, names, data.subjects, data.labels, SYNTHETIC_AUS, data.intensities.round(3)), out)
    return out
