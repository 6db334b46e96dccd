"""The AU appearance model of the synthetic faces: every shape of a face in face units, as the 12 AUs move it.

Each AU moves the region it moves on a real face (AU1 raises the inner brow ends, AU12
pulls the lip corners up, ...), so a model has to look at the right place to detect it.
Shapes are polygons in *face units* (head half-width ~0.85, origin between the cheeks,
y down), computed for the whole batch at once with numpy; `synthetic_drawing` poses
and paints them. The 32 landmarks (``LANDMARK_NAMES``) come from the same shapes.
"""

from __future__ import annotations

import numpy as np

SYNTHETIC_AUS: list[int] = [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 25, 26]  # the AUs the model draws


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


def face_shapes(p: dict[str, np.ndarray], au: dict[int, np.ndarray]) -> dict[str, tuple[np.ndarray, str]]:
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
