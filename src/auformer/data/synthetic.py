"""Procedurally drawn faces with 12 Action Units: the embedded default dataset.

Real AU datasets (BP4D, DISFA, CASME II) need a licence, so ``auformer train``
with no data runs on faces drawn here. Each AU moves the region it moves on a
real face (AU1 raises the inner brow ends, AU12 pulls the lip corners up, ...),
so a model has to look at the right place to detect it. Subjects are fixed
identity parameters (head shape, skin, hair, eyes, nose, mouth); each image adds
pose, lighting, blur and noise jitter. Labels follow BP4D-like occurrence rates
with co-occurrences (AU6 with AU12, AU1 with AU2, ...) and can be flipped at a
configurable rate to exercise the MDWA margin.

Drawing: every shape is a polygon in *face units* (head half-width ~0.85,
origin between the cheeks, y down), computed for the whole batch at once with
numpy, posed (yaw, rotation, scale, shift) by one transform, then drawn with
anti-aliased OpenCV polygons on a 2x canvas that is area-downsampled. The
per-image Python loop only calls OpenCV, which is what makes it fast.
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
from auformer.errors import AUFormerError
from auformer.files import atomic_path, atomic_write_text

SYNTHETIC_AUS: list[int] = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 25, 26]

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

# Identity parameters, fixed per subject (face units unless noted; tones in [0, 1]).
IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "face_w": (0.78, 0.92),  # head half-width
    "face_h": (1.0, 1.12),  # head half-height
    "chin": (0.0, 1.0),  # how pointed the chin is
    "eye_y": (-0.14, -0.04),  # eye centre height
    "eye_dx": (0.30, 0.37),  # eye centre distance from the midline
    "eye_w": (0.13, 0.16),  # eye half-width
    "eye_h": (0.055, 0.075),  # upper-lid opening
    "brow_gap": (0.08, 0.12),  # brow height above the upper lid
    "brow_thick": (0.035, 0.06),  # brow thickness
    "nose_y": (0.24, 0.32),  # nose tip height
    "nose_w": (0.09, 0.13),  # nostril half-width
    "mouth_y": (0.52, 0.60),  # lip line height
    "mouth_w": (0.22, 0.29),  # mouth half-width
    "lip_upper": (0.03, 0.05),  # upper lip thickness
    "lip_lower": (0.04, 0.065),  # lower lip thickness
    "skin_tone": (0.0, 1.0),  # light -> dark along SKIN_PALETTE
    "hair": (0.0, 1.0),  # < 0.15 bald, < 0.6 short, else long
    "hair_tone": (0.0, 1.0),  # along HAIR_PALETTE
    "iris_tone": (0.0, 1.0),  # along IRIS_PALETTE
}
# Per-image parameters: pose (radians, ratio, fraction of the image) and lighting.
IMAGE_RANGES: dict[str, tuple[float, float]] = {
    "yaw": (-0.15, 0.15),
    "rotation": (-0.1, 0.1),
    "scale": (0.9, 1.1),
    "shift_x": (-0.05, 0.05),
    "shift_y": (-0.05, 0.05),
    "light_x": (-0.3, 0.3),  # brightness gradient across the image, left -> right
    "light_y": (-0.3, 0.3),  # top -> bottom
    "brightness": (0.8, 1.15),
    "blur": (0.0, 0.5),  # Gaussian sigma in pixels at 64 px (scaled with size)
    "noise": (0.0, 4.0),  # Gaussian noise std in grey levels
    "background": (0.0, 1.0),  # along BACKGROUND_PALETTE
}
LATENT_NAMES: list[str] = [*IDENTITY_RANGES, *IMAGE_RANGES]

SKIN_PALETTE = np.array([[241, 208, 180], [224, 178, 140], [190, 138, 98], [141, 94, 62], [92, 60, 42]], np.float32)
HAIR_PALETTE = np.array([[25, 20, 18], [70, 45, 30], [130, 90, 50], [200, 165, 100], [150, 145, 140]], np.float32)
IRIS_PALETTE = np.array([[60, 35, 20], [110, 75, 40], [70, 110, 70], [70, 110, 160]], np.float32)
BACKGROUND_PALETTE = np.array([[90, 110, 140], [160, 160, 150], [120, 140, 110], [200, 190, 170], [60, 60, 70]], np.float32)

FACE_UNIT = 0.32  # face unit as a fraction of the image size (head ~ 0.55 x 0.7 of the image)
SHIFT_BITS = 4  # OpenCV sub-pixel precision of polygon coordinates
LIP_RGB = np.array([0.78, 0.52, 0.52], np.float32)  # lip colour relative to skin
BLUSH_RGB = np.array([1.08, 0.82, 0.80], np.float32)  # cheek colour relative to skin
INK_RGB = np.array([0.45, 0.38, 0.36], np.float32)  # skin folds and wrinkles relative to skin


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


# ---------------------------------------------------------------- geometry (face units, whole batch)


def _arc(start: np.ndarray, end: np.ndarray, bulge: np.ndarray, n: int = 9) -> np.ndarray:
    """Quadratic curve from start to end whose midpoint is pushed by bulge; (M, 2) each -> (M, n, 2)."""
    t = np.linspace(0.0, 1.0, n)[None, :, None]  # (1, n, 1)
    start, end, bulge = (np.reshape(a, (-1, 1, 2)) for a in (start, end, bulge))  # (M or 1, 1, 2)
    return start + (end - start) * t + bulge * (4 * t * (1 - t))


def _ellipse(center: np.ndarray, rx: np.ndarray | float, ry: np.ndarray | float, n: int = 16) -> np.ndarray:
    """Ellipse outline (M, n, 2) around center (M, 2)."""
    angle = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    unit = np.stack([np.cos(angle), np.sin(angle)], -1)  # (n, 2)
    radii = np.stack(np.broadcast_arrays(rx, ry), -1).reshape(-1, 1, 2)  # (M or 1, 1, 2)
    return np.reshape(center, (-1, 1, 2)) + unit[None] * radii


def _xy(x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
    """Stack coordinates into points (M, 2)."""
    return np.stack(np.broadcast_arrays(x, y), -1).astype(np.float64)


def _band(centre: np.ndarray, half_thickness: np.ndarray) -> np.ndarray:
    """A polygon (M, 2n, 2) around a centre line (M, n, 2), thickness varying along it (M, n)."""
    upper = centre.copy()
    upper[..., 1] -= half_thickness
    lower = centre.copy()
    lower[..., 1] += half_thickness
    return np.concatenate([upper, lower[:, ::-1]], 1)


def _face_shapes(p: dict[str, np.ndarray], au: dict[int, np.ndarray]) -> dict[str, tuple[np.ndarray, str]]:
    """Every shape of every face in face units: name -> (points (M, [sides,] n, 2), depth kind).

    Symmetric parts are stacked as (M, 2, n, 2), right side first (s = -1 is image left).
    Depth kind "face" moves with yaw like the face surface, "nose" more, "outline" not at all.
    """
    fw, fh = p["face_w"], p["face_h"]
    jaw_drop = 0.14 * au[26]
    opened = np.clip(2 * au[25], 0, 1)  # lips apart (AU25 active) vs. touching
    shapes: dict[str, tuple[np.ndarray, str]] = {}

    angle = np.linspace(0.0, 2 * np.pi, 48, endpoint=False)[None]  # (1, 48)
    below = np.clip(np.sin(angle), 0, None)
    head_x = fw[:, None] * np.cos(angle) * (1 - 0.3 * p["chin"][:, None] * below**2)
    head_y = fh[:, None] * np.sin(angle) + jaw_drop[:, None] * below**2
    head = np.stack([head_x, head_y], -1)  # (M, 48, 2)
    shapes["hair_back"] = (_ellipse(_xy(0.0, 0.05), fw * 1.16, fh * 1.12, 24), "outline")
    shapes["neck"] = (
        np.stack([_xy(-0.42 * fw, 0.5), _xy(0.42 * fw, 0.5), _xy(0.5 * fw, 3.0), _xy(-0.5 * fw, 3.0)], 1),
        "outline",
    )
    shapes["ears"] = (np.stack([_ellipse(_xy(s * fw * 0.97, p["eye_y"] + 0.12), 0.09, 0.17, 12) for s in (-1, 1)], 1), "outline")
    shapes["head"] = (head, "outline")
    top = np.linspace(np.pi + 0.2, 2 * np.pi - 0.2, 16)
    cap = np.stack([1.05 * fw[:, None] * np.cos(top), 1.05 * fh[:, None] * np.sin(top)], -1)  # (M, 16, 2)
    hairline = _arc(cap[:, -1], cap[:, 0], _xy(0.0, -0.4 * fh))  # back from right to left, highest mid-forehead
    shapes["hair_cap"] = (np.concatenate([cap, hairline], 1), "outline")

    # Eyes: AU7 tightens both lids, AU6 pushes the lower lid up from below.
    eyes, whites, irises, pupils, lid_skin, lashes, creases, tension, furrows, crows = ([] for _ in range(10))
    brows, wrinkles2, cheeks = [], [], []
    for s in (-1, 1):
        cx, cy, ew = s * p["eye_dx"], p["eye_y"], p["eye_w"]
        upper_open = p["eye_h"] * (1 - 0.45 * au[7] - 0.2 * au[6])
        lower_open = p["eye_h"] * 0.65 * (1 - 0.45 * au[7] - 0.6 * au[6])
        inner, outer = _xy(cx - s * ew, cy), _xy(cx + s * ew, cy - 0.01)
        upper_lid = _arc(inner, outer, _xy(0.0, -2 * upper_open))
        lower_lid = _arc(inner, outer, _xy(0.0, 2 * lower_open))
        eyes.append((inner, outer, upper_lid[:, 4], lower_lid[:, 4]))
        whites.append(np.concatenate([upper_lid, lower_lid[:, ::-1]], 1))
        irises.append(_ellipse(_xy(cx, cy), 0.45 * ew, 0.45 * ew, 12))
        pupils.append(_ellipse(_xy(cx, cy), 0.2 * ew, 0.2 * ew, 8))
        lid_skin.append(np.concatenate([upper_lid, (upper_lid + [0.0, -0.12])[:, ::-1]], 1))
        lid_skin.append(np.concatenate([lower_lid, (lower_lid + [0.0, 0.1])[:, ::-1]], 1))
        lashes.append(upper_lid)
        creases.append(upper_lid[:, 1:-1] + [0.0, -0.03])
        tension.append(lower_lid[:, 1:-1] + [0.0, 0.025])
        furrows.append(
            _arc(_xy(cx - s * 0.6 * ew, cy + lower_open + 0.04), _xy(cx + s * 0.7 * ew, cy + lower_open + 0.035), _xy(0.0, 0.02))
        )
        for dy in (-0.035, 0.0, 0.035):
            crows.append(np.stack([_xy(cx + s * (ew + 0.02), cy + dy), _xy(cx + s * (ew + 0.09), cy + 2.2 * dy)], 1))
        cheeks.append(_ellipse(_xy(cx + s * 0.06, cy + 0.3 - 0.09 * au[6]), 0.15 + 0.02 * au[6], 0.09 + 0.02 * au[6]))

        # Brows: AU1 raises the inner end, AU2 the outer, AU4 lowers and draws them in.
        base = cy - p["eye_h"] - p["brow_gap"]
        brow = np.stack(
            [
                _xy(cx - s * 0.9 * ew - s * 0.05 * au[4], base + 0.01 - 0.14 * au[1] + 0.09 * au[4]),
                _xy(cx + s * 0.1 * ew, base - 0.035 - 0.06 * au[1] - 0.07 * au[2] + 0.05 * au[4]),
                _xy(cx + s * 1.3 * ew, base + 0.01 - 0.14 * au[2] + 0.03 * au[4]),
            ],
            1,
        )  # (M, 3, 2) inner, middle, outer
        brows.append(brow)
        wrinkles2.extend(_arc(_xy(s * 0.3, base - d), _xy(s * 0.6, base - d + 0.02), _xy(0.0, -0.02), 5) for d in (0.14, 0.21))
    shapes["cheeks"] = (np.stack(cheeks, 1), "face")
    shapes["whites"] = (np.stack(whites, 1), "face")
    shapes["irises"] = (np.stack(irises, 1), "face")
    shapes["pupils"] = (np.stack(pupils, 1), "face")
    shapes["lid_skin"] = (np.stack(lid_skin, 1), "face")
    shapes["lashes"] = (np.stack(lashes, 1), "face")
    shapes["creases"] = (np.stack(creases, 1), "face")
    shapes["lid_tension"] = (np.stack(tension, 1), "face")
    shapes["infraorbital"] = (np.stack(furrows, 1), "face")
    shapes["crows_feet"] = (np.stack(crows, 1), "face")
    brow_pts = np.stack(brows, 1)  # (M, 2, 3, 2)
    shapes["brows"] = (
        _band(brow_pts.reshape(-1, 3, 2), p["brow_thick"].repeat(2)[:, None] * [0.55, 0.5, 0.3]).reshape(len(fw), 2, 6, 2),
        "face",
    )
    base = brow_pts[:, 0, 0, 1]  # (M,) right inner brow height
    shapes["glabella"] = (
        np.stack([np.stack([_xy(s * 0.05, base - 0.02), _xy(s * 0.045, base + 0.08)], 1) for s in (-1, 1)], 1),
        "face",
    )
    shapes["wrinkles_inner"] = (
        np.stack([_arc(_xy(-0.22, base - d), _xy(0.22, base - d), _xy(0.0, -0.02), 7) for d in (0.13, 0.2)], 1),
        "face",
    )
    shapes["wrinkles_outer"] = (np.stack(wrinkles2, 1), "face")

    # Nose: AU10 lifts the alae and deepens the nasolabial folds.
    ny, nw = p["nose_y"], p["nose_w"]
    lift = 0.025 * au[10]
    shapes["nose_sides"] = (
        np.stack([np.stack([_xy(s * 0.07, p["eye_y"] + 0.03), _xy(s * 0.8 * nw, ny - 0.09)], 1) for s in (-1, 1)], 1),
        "face",
    )
    shapes["alae"] = (
        np.stack(
            [_arc(_xy(s * nw, ny - 0.06 - lift), _xy(s * 0.35 * nw, ny + 0.03 - lift), _xy(s * 0.035, 0.01)) for s in (-1, 1)], 1
        ),
        "nose",
    )
    shapes["nose_tip"] = (_arc(_xy(-0.35 * nw, ny + 0.03), _xy(0.35 * nw, ny + 0.03), _xy(0.0, 0.015))[:, None], "nose")
    shapes["nostrils"] = (np.stack([_ellipse(_xy(s * 0.5 * nw, ny + 0.005 - lift), 0.03, 0.016, 10) for s in (-1, 1)], 1), "nose")

    # Mouth: AU12 corners up/out, AU15 down, AU14 in + dimples, AU17 lower lip up,
    # AU10 upper lip up, AU25 lips apart, AU26 jaw (lower lip, chin) down.
    mw, my = p["mouth_w"], p["mouth_y"]
    rest = my - 0.02 * au[17] + 0.6 * jaw_drop * (1 - opened)
    corner_y = my - 0.09 * au[12] + 0.08 * au[15] - 0.01 * au[14] + 0.3 * jaw_drop
    corner_x = mw * (1 + 0.2 * au[12] - 0.12 * au[14] + 0.04 * au[15])
    gap = au[25] * (0.05 + 0.9 * jaw_drop)
    upper_inner_y = rest - 0.15 * gap - 0.02 * au[10]
    lower_inner_y = rest + 0.85 * gap - 0.02 * au[10] * (1 - opened)
    left, right = _xy(-corner_x, corner_y), _xy(corner_x, corner_y)
    upper_inner = _arc(left, right, _xy(0.0, upper_inner_y - corner_y))
    lower_inner = _arc(left, right, _xy(0.0, lower_inner_y - corner_y))
    lower_outer = _arc(left, right, _xy(0.0, lower_inner_y + p["lip_lower"] * (1 + 0.3 * au[17]) - corner_y))
    peak_y = upper_inner_y - p["lip_upper"] * (1 - 0.3 * au[14]) - 0.045 * au[10]
    upper_outer = np.stack(
        [
            left,
            _xy(-0.7 * corner_x, peak_y + 0.01),
            _xy(-0.35 * corner_x, peak_y),
            _xy(0.0, peak_y + 0.012),
            _xy(0.35 * corner_x, peak_y),
            _xy(0.7 * corner_x, peak_y + 0.01),
            right,
        ],
        1,
    )
    teeth_edge = upper_inner.copy()
    teeth_edge[..., 1] += np.minimum(0.5 * gap, 0.03)[:, None]
    shapes["mouth_inside"] = (np.concatenate([upper_inner, lower_inner[:, ::-1]], 1)[:, None], "face")
    shapes["teeth"] = (np.concatenate([upper_inner, teeth_edge[:, ::-1]], 1)[:, None], "face")
    shapes["upper_lip"] = (np.concatenate([upper_outer, upper_inner[:, ::-1]], 1)[:, None], "face")
    shapes["lower_lip"] = (np.concatenate([lower_inner, lower_outer[:, ::-1]], 1)[:, None], "face")
    shapes["lip_line"] = (np.stack([upper_inner, lower_inner], 1), "face")
    sides = [(s, _xy(s * corner_x, corner_y)) for s in (-1, 1)]
    shapes["nasolabial"] = (
        np.stack([_arc(_xy(s * (nw + 0.03), ny - 0.03 - lift), c + [s * 0.05, 0.05], _xy(s * 0.04, 0.0)) for s, c in sides], 1),
        "face",
    )
    shapes["dimples"] = (
        np.stack([_arc(c + [s * 0.05, -0.03], c + [s * 0.05, 0.03], _xy(s * 0.015, 0.0), 5) for s, c in sides], 1),
        "face",
    )
    shapes["depressor"] = (np.stack([np.stack([c + [s * 0.01, 0.01], c + [s * 0.04, 0.09]], 1) for s, c in sides], 1), "face")
    crease_y = lower_inner_y + p["lip_lower"] + 0.07 - 0.04 * au[17]
    shapes["chin_crease"] = (_arc(_xy(-0.12, crease_y), _xy(0.12, crease_y), _xy(0.0, -0.02))[:, None], "face")
    shapes["chin_boss"] = (_ellipse(_xy(0.0, crease_y + 0.09), 0.11, 0.055)[:, None], "face")

    # Landmarks (not drawn): brows, eyes, nose, mouth, cheeks, chin crease, jaw line.
    jaw = head[:, [4, 8, 12, 16, 20]]  # angles 30..150 degrees, lower half
    marks = [brow_pts[:, i, j] for i in range(2) for j in range(3)]
    marks += [point for eye in eyes for point in eye]
    marks += [_xy(0.0, p["eye_y"]), _xy(0.0, ny + 0.03), *shapes["nostrils"][0].mean(2).transpose(1, 0, 2)]
    marks += [left, right, upper_outer[:, 3], _xy(0.0, upper_inner_y), _xy(0.0, lower_inner_y), lower_outer[:, 4]]
    marks += [*shapes["cheeks"][0].mean(2).transpose(1, 0, 2), _xy(0.0, crease_y - 0.02), *jaw.transpose(1, 0, 2)]
    shapes["landmarks"] = (np.stack(marks, 1), "face")
    return shapes


LANDMARK_NAMES: list[str] = [
    *(f"brow_{side}_{part}" for side in ("right", "left") for part in ("inner", "middle", "outer")),
    *(f"eye_{side}_{part}" for side in ("right", "left") for part in ("inner", "outer", "top", "bottom")),
    "nose_bridge",
    "nose_tip",
    "nostril_right",
    "nostril_left",
    "mouth_right",
    "mouth_left",
    "upper_lip_top",
    "upper_lip_inner",
    "lower_lip_inner",
    "lower_lip_bottom",
    "cheek_right",
    "cheek_left",
    "chin_crease",
    *(f"jaw_{deg}" for deg in (30, 60, 90, 120, 150)),
]


def _pose(points: np.ndarray, depth_kind: str, p: dict[str, np.ndarray], canvas: int) -> np.ndarray:
    """Face units -> canvas pixels: yaw (depth-dependent shift), rotation, scale, shift.

    points (M, ..., 2) -> same shape in pixels.
    """
    batch = (len(p["yaw"]),) + (1,) * (points.ndim - 2)  # broadcast per-face values over shapes
    per_face = {name: p[name].reshape(batch) for name in ("yaw", "rotation", "scale", "shift_x", "shift_y", "face_w")}
    x, y = points[..., 0], points[..., 1]
    if depth_kind != "outline":
        depth = 0.55 * np.sqrt(np.clip(1 - (x / per_face["face_w"]) ** 2, 0, 1)) + (0.22 if depth_kind == "nose" else 0.0)
        x = x * np.cos(per_face["yaw"]) + depth * np.sin(per_face["yaw"])
    cos, sin = np.cos(per_face["rotation"]), np.sin(per_face["rotation"])
    unit = canvas * FACE_UNIT * per_face["scale"]
    px = canvas * (0.5 + per_face["shift_x"]) + unit * (cos * x - sin * y)
    py = canvas * (0.5 + per_face["shift_y"]) + unit * (sin * x + cos * y)
    return np.stack([px, py], -1)


# ---------------------------------------------------------------- drawing


def _palette(palette: np.ndarray, tone: np.ndarray) -> np.ndarray:
    """Colours (M, 3) interpolated along a palette at tones in [0, 1]."""
    grid = np.linspace(0.0, 1.0, len(palette))
    return np.stack([np.interp(tone, grid, palette[:, c]) for c in range(3)], -1)


def _strokes(p: dict[str, np.ndarray], au: dict[int, np.ndarray]) -> list[tuple[str, bool, np.ndarray, np.ndarray]]:
    """The drawing program in paint order: (shape name, filled?, colour (M, 3), strength (M,)).

    A line's strength blends its colour from the skin (0) to the fold colour (1); a
    stroke with strength below 0.02 is not drawn at all.
    """
    skin = _palette(SKIN_PALETTE, p["skin_tone"])
    hair = _palette(HAIR_PALETTE, p["hair_tone"])
    ink = skin * INK_RGB
    one = np.ones_like(p["skin_tone"])

    def fold(strength: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        strength = np.clip(strength * one, 0.0, 1.0)
        return skin + strength[:, None] * (ink - skin), strength

    open_mouth = (au[25] > 0).astype(np.float64)
    return [
        ("hair_back", True, hair, (p["hair"] >= 0.6) * one),
        ("neck", True, skin * 0.85, one),
        ("ears", True, skin * 0.92, one),
        ("head", True, skin, one),
        ("hair_cap", True, hair, (p["hair"] >= 0.15) * one),
        ("wrinkles_inner", False, *fold(0.7 * au[1])),
        ("wrinkles_outer", False, *fold(0.7 * au[2])),
        ("whites", True, np.full_like(skin, 235.0), one),
        ("irises", True, _palette(IRIS_PALETTE, p["iris_tone"]), one),
        ("pupils", True, np.full_like(skin, 15.0), one),
        ("lid_skin", True, skin, one),
        ("cheeks", True, skin + (0.25 + 0.5 * au[6])[:, None] * (skin * BLUSH_RGB - skin), one),
        ("lashes", False, np.full_like(skin, 30.0), one),
        ("creases", False, *fold(0.45)),
        ("lid_tension", False, *fold(0.8 * au[7])),
        ("infraorbital", False, *fold(0.8 * au[6])),
        ("crows_feet", False, *fold(0.9 * au[6])),
        ("brows", True, 0.6 * hair + 0.4 * ink, one),
        ("glabella", False, *fold(0.9 * au[4])),
        ("nose_sides", False, *fold(0.25)),
        ("alae", False, *fold(0.55 + 0.3 * au[10])),
        ("nose_tip", False, *fold(0.35)),
        ("nostrils", True, skin * 0.35, one),
        ("nasolabial", False, *fold(0.15 + 0.45 * au[10] + 0.35 * au[12])),
        ("mouth_inside", True, np.broadcast_to([70.0, 25.0, 30.0], skin.shape), open_mouth),
        ("teeth", True, np.full_like(skin, 230.0), open_mouth),
        ("upper_lip", True, skin * LIP_RGB, one),
        ("lower_lip", True, skin * LIP_RGB * 1.05, one),
        ("lip_line", False, skin * LIP_RGB * 0.6, one),
        ("dimples", False, *fold(0.9 * au[14])),
        ("depressor", False, *fold(0.8 * au[15])),
        ("chin_crease", False, *fold(0.2 + 0.6 * au[17])),
        ("chin_boss", True, skin + (0.3 * au[17])[:, None] * (ink - skin), (au[17] > 0) * one),
    ]


def render_faces(
    latents: np.ndarray, intensities: np.ndarray, size: int = 64, rng: np.random.Generator | None = None, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Draw faces from latents (M, L) (columns LATENT_NAMES) and AU intensities (M, 12) in [0, 1].

    Returns images (M, size, size, 3) uint8 RGB and landmarks (M, K, 2) in [0, 1]
    image coordinates. ``rng`` adds the pixel noise of the ``noise`` latent; without
    it the output is a pure function of the inputs (used to compare AUs on/off).
    """
    if latents.ndim != 2 or latents.shape[1] != len(LATENT_NAMES):
        raise AUFormerError(f"latents must have shape (M, {len(LATENT_NAMES)}), got {latents.shape}")
    if intensities.shape != (len(latents), len(SYNTHETIC_AUS)):
        raise AUFormerError(f"intensities must have shape ({len(latents)}, {len(SYNTHETIC_AUS)}), got {intensities.shape}")
    canvas_size = 2 * size  # draw at 2x, area-downsample: cheap anti-aliasing of fine lines
    p = {name: latents[:, i].astype(np.float64) for i, name in enumerate(LATENT_NAMES)}
    au = {number: intensities[:, i].astype(np.float64) for i, number in enumerate(SYNTHETIC_AUS)}
    shapes = {name: _pose(points, kind, p, canvas_size) for name, (points, kind) in _face_shapes(p, au).items()}
    landmarks = (shapes.pop("landmarks") / canvas_size).astype(np.float32)
    fixed = {  # OpenCV fixed-point coordinates, (M, polygons, n, 2)
        name: np.round(points * (1 << SHIFT_BITS)).astype(np.int32).reshape(len(latents), -1, points.shape[-2], 2)
        for name, points in shapes.items()
    }
    strokes = [(fixed[name], filled, color.tolist(), strength > 0.02) for name, filled, color, strength in _strokes(p, au)]
    background = _palette(BACKGROUND_PALETTE, p["background"]).tolist()
    line_width = max(1, round(canvas_size / 64))  # >= 1 px after downsampling

    images = np.empty((len(latents), size, size, 3), np.uint8)
    canvas = np.empty((canvas_size, canvas_size, 3), np.uint8)
    for i in tqdm(range(len(latents)), desc="drawing faces", unit="img", disable=not progress):
        canvas[:] = background[i]
        for points, filled, colors, visible in strokes:
            if not visible[i]:
                continue
            if filled:
                cv2.fillPoly(canvas, list(points[i]), colors[i], cv2.LINE_AA, SHIFT_BITS)
            else:
                cv2.polylines(canvas, list(points[i]), False, colors[i], line_width, cv2.LINE_AA, SHIFT_BITS)
        images[i] = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
        sigma = p["blur"][i] * size / 64
        if sigma > 0.3:
            images[i] = cv2.GaussianBlur(images[i], (0, 0), sigma)
    return _light(images, p, rng), landmarks


def _light(images: np.ndarray, p: dict[str, np.ndarray], rng: np.random.Generator | None) -> np.ndarray:
    """Brightness, a linear lighting gradient and (with rng) Gaussian pixel noise, in place in chunks."""
    size = images.shape[1]
    ramp = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    for start in range(0, len(images), 256):  # chunks bound the float32 working memory
        part = slice(start, start + 256)
        gain = (
            p["brightness"][part, None, None]
            + p["light_x"][part, None, None] * ramp[None, None, :]
            + p["light_y"][part, None, None] * ramp[None, :, None]
        ).astype(np.float32)  # (m, S, S)
        pixels = images[part].astype(np.float32) * gain[..., None]  # (m, S, S, 3)
        if rng is not None:
            pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * p["noise"][part, None, None, None].astype(np.float32)
        images[part] = np.clip(pixels + 0.5, 0, 255).astype(np.uint8)
    return images


# ---------------------------------------------------------------- dataset


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
