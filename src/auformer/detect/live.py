"""``auformer live``: AUs of a camera, stream or clip as it plays, in bounded stages that never fall behind.

Stages, each in its own thread, joined by bounded hand-overs::

    capture (stream_frames) -> LatestSlot -> faces (FacePipeline: detect every K, track between)
        -> queue of 1 -> network + smoothing + CSV + terminal view (this thread)

The capture never waits: when the later stages are slower than the camera, a frame not yet
taken is replaced by the newer one (newest wins) and counted as dropped, so the latency from
capture to result stays bounded instead of growing. A file played with ``--no-realtime`` is
the exception: there the capture waits, and every frame is analysed. Frames live in memory
only; nothing but the CSV rows and ``live.json`` is written.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from auformer.detect.detector import SYNTHETIC_WARNING, Detector, parse_thresholds
from auformer.detect.smoothing import face_smoothers, smooth_results
from auformer.detect.sources import LOST_AFTER_S, Frame, SourceLost, in_background, stream_frames
from auformer.detect.writers import CsvWriter
from auformer.errors import AUFormerError
from auformer.files import atomic_write_text, earlier_outputs, resolve_inside

SUMMARY_NAME = "live.json"
LATENCIES_KEPT = 100_000  # latencies kept for the percentiles (about 2 hours at 15 fps): memory stays flat


class LatestSlot:
    """One frame between capture and analysis: a newer frame replaces one not yet taken (counted in ``dropped``).

    ``put(item, wait=True)`` waits for the slot to be taken instead (a file analysed frame by frame).
    ``close(error)`` ends it: ``get`` returns None once empty, or raises ``error``.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._item = None
        self._closed = False
        self._error: BaseException | None = None
        self.put_count = 0
        self.dropped = 0

    def put(self, item, wait: bool = False) -> None:
        with self._changed:
            while wait and self._item is not None and not self._closed:
                self._changed.wait()
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.put_count += 1
            self._changed.notify_all()

    def close(self, error: BaseException | None = None) -> None:
        with self._changed:
            self._closed, self._error = True, self._error or error
            self._changed.notify_all()

    def get(self, timeout: float):
        """The newest item; None when closed and empty; raises `SourceLost` after ``timeout`` s with nothing."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._item is not None or self._closed, timeout):
                raise SourceLost(f"no frame for {timeout:g} s: the source hangs")
            item, self._item = self._item, None
            self._changed.notify_all()
            if item is None and self._error is not None:
                raise self._error
            return item


def resident_mb() -> float | None:
    """This process's resident memory now, in MiB (Linux's /proc; None where there is none, e.g. macOS)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


@dataclass
class LiveStats:
    """Counts and timings of one live run: what the view shows and ``live.json`` records."""

    captured: int = 0
    dropped: int = 0
    analysed: int = 0
    faces: int = 0
    started: float = field(default_factory=time.perf_counter)
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCIES_KEPT))  # seconds, capture to result
    recent: deque = field(default_factory=lambda: deque(maxlen=60))  # result times, for the current fps
    # One record per minute of the run (frames analysed, p50/p95 latency, memory): does a long stream stay flat?
    minutes: list = field(default_factory=list)
    _minute: list = field(default_factory=list)  # latencies (s) of the minute in progress

    def add(self, captured: float, faces: int) -> None:
        now = time.perf_counter()
        while now - self.started >= 60.0 * (len(self.minutes) + 1):
            self._close_minute()
        self.analysed += 1
        self.faces += faces
        self.latencies.append(now - captured)
        self._minute.append(now - captured)
        self.recent.append(now)

    def _close_minute(self) -> None:
        latencies = np.asarray(self._minute) * 1000  # (frames of the minute,) ms
        p50, p95 = (round(float(np.quantile(latencies, q)), 1) if len(latencies) else None for q in (0.5, 0.95))
        self.minutes.append({"minute": len(self.minutes) + 1, "analysed": len(latencies), "p50_ms": p50, "p95_ms": p95,
                             "rss_mb": resident_mb()})  # fmt: skip
        self._minute = []

    def fps(self) -> float:
        """Analysed frames per second over the last (up to 60) results."""
        if len(self.recent) < 2:
            return 0.0
        return (len(self.recent) - 1) / max(self.recent[-1] - self.recent[0], 1e-9)

    def latency_ms(self, quantile: float) -> float:
        return float(np.quantile(np.asarray(self.latencies), quantile) * 1000) if self.latencies else float("nan")


def capture_into(slot: LatestSlot, frames: Iterator[Frame], stop: threading.Event, wait: bool) -> threading.Thread:
    """Start the capture thread: ``frames`` into ``slot`` with their capture times, until the end or ``stop``."""

    def work() -> None:
        error = None
        try:
            for frame in frames:
                slot.put((frame, time.perf_counter()), wait)
                if stop.is_set():
                    break
        except BaseException as caught:  # noqa: BLE001  (handed to the analysing thread, which raises it)
            error = caught
        finally:
            slot.close(error)
            frames.close()

    thread = threading.Thread(target=work, name="auformer-capture", daemon=True)
    thread.start()
    return thread


def live_results(
    detector: Detector, frames: Iterator[Frame], stop: threading.Event, realtime: bool, stats: LiveStats
) -> Iterator[tuple[Frame, float, list]]:
    """``(frame, capture time, aligned faces)`` of the frames the stages had time for, newest first wins.

    Ends at the end of ``frames`` or when ``stop`` is set; a lost source raises `SourceLost`
    after the frames before it. The face stage runs in its own thread, one frame ahead.
    """
    slot = LatestSlot()
    capture = capture_into(slot, frames, stop, wait=not realtime)
    stamps: dict[int, float] = {}

    def taken() -> Iterator[Frame]:
        while not stop.is_set():
            item = slot.get(timeout=LOST_AFTER_S + 3)  # the capture's own loss check fires first
            if item is None:
                return
            frame, stamps[frame.index] = item
            yield frame

    try:
        for frame, aligned in in_background(detector.pipeline.faces(taken()), depth=1):
            stats.captured, stats.dropped = slot.put_count, slot.dropped
            yield frame, stamps.pop(frame.index), aligned
    finally:
        stop.set()
        slot.close()
        stats.captured, stats.dropped = slot.put_count, slot.dropped
        capture.join(timeout=LOST_AFTER_S + 1)  # a capture hung in a read is a daemon thread: it does not block the exit


def _outputs(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """OUT and the CSV path inside it; an OUT holding an earlier live run is refused (never replaced)."""
    out = Path(args.out or f"runs/live-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    csv_path = resolve_inside(out, args.csv, "--csv") if args.csv else None
    if earlier := earlier_outputs([out / SUMMARY_NAME, csv_path]):
        raise AUFormerError(f"{earlier[0]} already exists (an earlier run): choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out, csv_path


@contextlib.contextmanager
def _stop_like_ctrl_c(*signals: signal.Signals) -> Iterator[None]:
    """A terminal closed or `kill` stops the run as Ctrl-C does, for as long as it runs; the caller's handlers
    are put back after (the CLI may run in a process that has its own, e.g. a test runner or a notebook)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {number: signal.signal(number, signal.default_int_handler) for number in signals}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_live(args: argparse.Namespace) -> None:
    """``auformer live``: see the module docstring; ``live.json`` in OUT records the counts and latencies."""
    from auformer.detect.live_view import LiveView

    out, csv_path = _outputs(args)
    detector = Detector(
        args.checkpoint,
        face_detector=args.face_detector,
        device=args.device,
        threshold=parse_thresholds(args.threshold),
        backbone_weights=args.backbone_weights,
        detect_every=args.detect_every,
        runtime=args.runtime,
    )
    if detector.synthetic:
        print(SYNTHETIC_WARNING)
    detector.warm_up()  # the first frames' latency is not the loading of the network and the face detector
    smoothers = face_smoothers(args.smooth)
    writer = CsvWriter(csv_path, openface=False) if csv_path else None
    stats, stop = LiveStats(), threading.Event()
    ended, problem = "end of source", None
    frames = stream_frames(args.source, realtime=args.realtime)
    with _stop_like_ctrl_c(signal.SIGTERM, signal.SIGHUP), LiveView(args.source, detector) as view:
        try:
            for frame, captured, aligned in live_results(detector, frames, stop, args.realtime, stats):
                table = smooth_results(detector, smoothers, detector.frame_table(frame, aligned))
                if writer is not None:
                    writer.write(table)  # appended and closed per frame: on disk as it comes
                stats.add(captured, len(aligned))
                view.update(table, stats)
                if args.duration is not None and time.perf_counter() - stats.started >= args.duration:
                    ended = f"--duration {args.duration:g} s reached"
                    break
        except KeyboardInterrupt:
            ended = "stopped (Ctrl-C)"
        except AUFormerError as error:  # the source lost or truncated: keep what was analysed, then say so
            ended, problem = "source lost", error
        view.update(None, stats)
    summary = {
        "source": args.source,
        "checkpoint": str(detector.checkpoint),
        "ended": ended,
        "problem": str(problem) if problem else None,
        "captured_frames": stats.captured,
        "analysed_frames": stats.analysed,
        "dropped_frames": stats.dropped,
        "faces": stats.faces,
        "seconds": round(time.perf_counter() - stats.started, 3),
        "latency_ms": {"p50": round(stats.latency_ms(0.5), 1), "p95": round(stats.latency_ms(0.95), 1)},
        "minutes": stats.minutes,
        "smooth": args.smooth,
        "detect_every": args.detect_every,
        "realtime": args.realtime,
        "csv": csv_path.name if csv_path else None,
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    print(
        f"{ended}: {stats.analysed} frames analysed of {stats.captured} captured, {stats.dropped} dropped, "
        f"{stats.faces} faces; latency p50 {summary['latency_ms']['p50']} ms, p95 {summary['latency_ms']['p95']} ms"
    )
    if csv_path:
        print(f"wrote {csv_path} ({writer.rows} rows)")
    print(f"wrote {out / SUMMARY_NAME}; outputs in {out}")
    if problem is not None:
        raise AUFormerError(f"{problem}; the frames analysed before it are saved in {out}")
