"""Per-face smoothing of AU outputs over time, so that live AUs look steady instead of flickering.

Each face identity (`auformer.faces.track`) gets its own filter over its vector of AU values,
driven by the frames' times, not their count: when frames are dropped the gap in time is what
the filter sees. Two filters:

- ``ema``: exponential smoothing with time constant ``tau`` seconds,
  ``y = y_prev + a (x - y_prev)`` with ``a = 1 - exp(-dt / tau)``.
- ``one-euro``: the One-Euro filter (Casiez, Roussel and Vogel, CHI 2012): a low-pass whose
  cut-off rises with the speed of the signal, ``cutoff = min_cutoff + beta |dx|``, with
  ``a(cutoff) = 1 / (1 + 1 / (2 pi cutoff dt))``; steady when an AU holds, quick when it moves.

Written here rather than taken from a package: each filter is a few lines of arithmetic on a
vector, and the packages that exist filter one scalar at a time and are not maintained.
The first value of a face passes through unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from auformer.detect.detector import INTENSITY_SUFFIX, occurrence_columns

if TYPE_CHECKING:
    from auformer.detect.detector import Detector

SMOOTHERS = ("one-euro", "ema", "none")  # --smooth choices
FORGET_S = 30.0  # a face not seen for this long is forgotten (its id is not reused in a stream: memory stays flat)


@dataclass
class _State:
    time: float
    value: np.ndarray  # (N,) smoothed values
    speed: np.ndarray  # (N,) smoothed derivative (One-Euro)


class FaceSmoother:
    """Smooths each face's AU vector over time: ``smooth(face_id, time_s, values) -> values``."""

    def __init__(self, kind: str = "one-euro", tau: float = 0.2, min_cutoff: float = 1.0, beta: float = 5.0) -> None:
        if kind not in SMOOTHERS:
            raise ValueError(f"smoothing must be one of {', '.join(SMOOTHERS)}, got {kind!r}")
        self.kind, self.tau, self.min_cutoff, self.beta = kind, tau, min_cutoff, beta
        self.d_cutoff = 1.0  # Hz, the cut-off of the speed estimate (the paper's default)
        self.states: dict[int, _State] = {}

    @staticmethod
    def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
        return 1.0 / (1.0 + 1.0 / (2 * math.pi * cutoff * dt))

    def smooth(self, face_id: int, time_s: float, values: np.ndarray) -> np.ndarray:
        """(N,) smoothed ``values`` (N,) of face ``face_id`` at ``time_s`` seconds (times increasing per face)."""
        values = np.asarray(values, dtype=np.float64)
        state = self.states.get(face_id)
        if self.kind == "none" or state is None or time_s <= state.time:
            smoothed, speed = values, np.zeros_like(values)
        else:
            dt = time_s - state.time
            if self.kind == "ema":
                smoothed, speed = state.value + (1 - math.exp(-dt / self.tau)) * (values - state.value), state.speed
            else:  # one-euro
                a_speed = self._alpha(self.d_cutoff, dt)
                speed = state.speed + a_speed * ((values - state.value) / dt - state.speed)
                a_value = self._alpha(self.min_cutoff + self.beta * np.abs(speed), dt)
                smoothed = state.value + a_value * (values - state.value)
        self.states[face_id] = _State(time_s, smoothed, speed)
        for old in [key for key, kept in self.states.items() if time_s - kept.time > FORGET_S]:
            del self.states[old]
        return smoothed

    def smooth_table(self, table: pd.DataFrame, columns: list[str], thresholds: np.ndarray | None) -> pd.DataFrame:
        """A result table with its face rows' ``columns`` smoothed per face (``table`` is not changed).

        ``thresholds`` (N,): occurrences ``COLUMN_c`` are recomputed from the smoothed values
        (for probability columns; None for intensities).
        """
        if self.kind == "none":
            return table
        rows = np.flatnonzero(table["success"].to_numpy() == 1)
        values = table[columns].to_numpy(dtype=np.float64, copy=True)  # (rows, N); numpy, not per-cell pandas
        faces, times = table["face"].to_numpy(), table["time_s"].to_numpy()
        for row in rows:
            values[row] = self.smooth(int(faces[row]), float(times[row]), values[row])
        replaced = {column: values[:, j] for j, column in enumerate(columns)}
        if thresholds is not None:
            replaced.update(occurrence_columns(values, thresholds, columns))
        # One new frame from columns: assigning a dozen columns into a copy costs several times more (per frame).
        return pd.DataFrame({name: replaced.get(name, table[name].array) for name in table.columns}, index=table.index)


def face_smoothers(kind: str) -> dict[str, FaceSmoother]:
    """The smoothers of one stream: one for the probabilities, one for the intensities."""
    return {"probs": FaceSmoother(kind), "intensity": FaceSmoother(kind)}


def smooth_results(detector: Detector, smoothers: dict[str, FaceSmoother], table: pd.DataFrame) -> pd.DataFrame:
    """One frame's result table with its probabilities (occurrences recomputed at the detector's thresholds)
    and intensities smoothed per face (``auformer live`` and serve's Live tab)."""
    if detector.occurrence:
        table = smoothers["probs"].smooth_table(table, detector.au_columns, detector.thresholds)
    if detector.intensity:
        table = smoothers["intensity"].smooth_table(table, [c + INTENSITY_SUFFIX for c in detector.au_columns], None)
    return table
