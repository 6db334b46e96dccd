"""The terminal view of ``auformer live``: one row per face, updated in place (rich).

Per face: its identity, the AUs present (occurrence over threshold) and the top values
(intensities 0-5 when the checkpoint has them, else probabilities); under the table the
analysed fps, the latency from capture to result and the dropped frames. Redrawn at most
``REFRESH_HZ`` times a second whatever the frame rate, so drawing never slows the analysis.
On a terminal the table updates in place; piped, only the last state is printed.
"""

from __future__ import annotations

import time

import pandas as pd
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from auformer.detect.detector import INTENSITY_SUFFIX, Detector

REFRESH_HZ = 8
TOP = 3  # top values shown per face


class LiveView:
    """``with LiveView(source, detector) as view: view.update(table, stats)`` per analysed frame."""

    def __init__(self, source: str, detector: Detector, console: Console | None = None) -> None:
        self.source, self.detector = source, detector
        self.live = Live(console=console or Console(), auto_refresh=False, transient=False)
        self.table: pd.DataFrame | None = None
        self.drawn = 0.0

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.live.__exit__(*exc)
        self.live.console.line()  # the summary lines start below the table

    def update(self, table: pd.DataFrame | None, stats) -> None:
        """Show the latest frame's ``table`` (None: keep the last one and redraw now, e.g. at the end)."""
        if table is not None:
            self.table = table
            if time.perf_counter() - self.drawn < 1 / REFRESH_HZ:
                return
        self.drawn = time.perf_counter()
        self.live.update(self.render(stats), refresh=True)

    def render(self, stats) -> Group:
        detector = self.detector
        values_named = "top intensities (0-5)" if detector.intensity else "top probabilities"
        view = Table(title=f"auformer live: {self.source}", title_justify="left")
        for name in ("face", "AUs present", values_named):
            view.add_column(name)
        faces = self.table[self.table["success"] == 1] if self.table is not None else self.table
        for _, row in faces.iterrows() if faces is not None else ():
            present = [c for c in detector.au_columns if detector.occurrence and row[c + "_c"] == 1]
            suffix = INTENSITY_SUFFIX if detector.intensity else ""
            values = {c: float(row[c + suffix]) for c in detector.au_columns}
            top = sorted(values, key=values.get, reverse=True)[:TOP]
            view.add_row(str(row["face"]), " ".join(present) or "-", "  ".join(f"{c} {values[c]:.2f}" for c in top))
        if faces is None or faces.empty:
            view.add_row("-", "no face in view", "")
        frame = int(self.table["frame"].iloc[0]) if self.table is not None else "-"
        line = (
            f"frame {frame}  {stats.fps():.1f} fps analysed  latency p50 {stats.latency_ms(0.5):.0f} ms "
            f"p95 {stats.latency_ms(0.95):.0f} ms  dropped {stats.dropped} of {stats.captured}"
        )
        return Group(view, Text(line))
