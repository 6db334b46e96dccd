"""Drawing the synthetic faces: latents (identity, pose, lighting) and AU intensities -> RGB images and landmarks.

The shapes of `synthetic_appearance` are posed (yaw, rotation, scale, shift) by one
transform, then drawn with anti-aliased OpenCV polygons on a 2x canvas that is
area-downsampled. The per-image Python loop only calls OpenCV, which is what makes it fast.
"""

from __future__ import annotations

import cv2
import numpy as np
from tqdm import tqdm

from auformer.data.synthetic_appearance import SYNTHETIC_AUS, face_shapes
from auformer.errors import AUFormerError

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
    shapes = {name: _pose(points, kind, p, canvas_size) for name, (points, kind) in face_shapes(p, au).items()}
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
