"""`auformer live`: a clip of real faces played as a camera, a network camera that disappears, smoothing, the screen."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auformer.cli import main
from auformer.cli.live import SMOOTHERS as CLI_SMOOTHERS
from auformer.detect.detector import occurrence_columns
from auformer.detect.live import LatestSlot, LiveStats
from auformer.detect.smoothing import SMOOTHERS, FaceSmoother
from auformer.detect.sources import SourceLost
from hostile import run_hostile
from media import face_leaves_and_returns, serve_mjpeg, tiny_checkpoint, write_video
from system_tools import require

AUS = [1, 2, 4, 6, 12]
FRAMES, AWAY = 30, range(12, 17)  # the astronaut is out of the picture for frames 12-16


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", AUS)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return face_leaves_and_returns(FRAMES, AWAY)


def live(checkpoint: Path, source: str, out: Path, *extra: str) -> int:
    return main(["live", "--source", source, "--checkpoint", str(checkpoint), "--out", str(out), "--csv", "rows.csv", *extra])


def test_clip_every_frame_keeps_ids_when_a_face_returns(checkpoint, frames, tmp_path):
    clip = write_video(tmp_path / "clip.avi", frames)
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGHUP)}
    assert live(checkpoint, str(clip), tmp_path / "out", "--no-realtime", "--smooth", "none") == 0
    # SIGTERM/SIGHUP stop a run like Ctrl-C only while it runs: the caller's handlers come back (a leaked
    # handler made a later serve test in the same process see default_int_handler instead of its own).
    assert {number: signal.getsignal(number) for number in handlers} == handlers
    rows = pd.read_csv(tmp_path / "out" / "rows.csv")
    summary = json.loads((tmp_path / "out" / "live.json").read_text())
    assert summary["dropped_frames"] == 0 and summary["analysed_frames"] == summary["captured_frames"] == FRAMES
    assert sorted(rows["frame"].unique()) == list(range(FRAMES))  # every frame, in order
    ids = rows.groupby("frame")["face"].apply(lambda faces: sorted(faces.dropna().astype(int)))
    hopper = 1  # the astronaut is found first (top left), Hopper second
    for frame, faces in ids.items():
        assert faces == ([hopper] if frame in AWAY else [0, hopper]), frame  # she comes back as face 0
    # The same columns as `auformer detect` writes.
    assert list(rows.columns[:10]) == ["input", "frame", "time_s", "face", "x", "y", "w", "h", "face_score", "success"]
    assert {"AU01", "AU12", "AU01_c", "AU12_c"} <= set(rows.columns)


def test_clip_played_faster_than_the_model_drops_frames(checkpoint, frames, tmp_path):
    clip = write_video(tmp_path / "fast.avi", frames * 2, fps=120.0)  # 0.5 s of video: no CPU analyses 120 frames/s here
    assert live(checkpoint, str(clip), tmp_path / "out") == 0
    rows = pd.read_csv(tmp_path / "out" / "rows.csv")
    summary = json.loads((tmp_path / "out" / "live.json").read_text())
    assert summary["captured_frames"] == 2 * FRAMES
    assert summary["dropped_frames"] > 0 and summary["analysed_frames"] + summary["dropped_frames"] == 2 * FRAMES
    assert rows["frame"].nunique() == summary["analysed_frames"]  # a row (or rows) per analysed frame, no more
    assert rows["frame"].is_monotonic_increasing and summary["smooth"] == "one-euro"  # smoothing on by default


def test_camera_lost_mid_stream_keeps_the_rows(checkpoint, frames, tmp_path, capsys):
    server, url = serve_mjpeg(frames[:12], fps=10)
    try:
        status = live(checkpoint, url, tmp_path / "out")
    finally:
        server.shutdown()
    captured = capsys.readouterr()
    assert status == 2 and "lost after frame" in captured.err and "saved in" in captured.err
    summary = json.loads((tmp_path / "out" / "live.json").read_text())
    assert summary["ended"] == "source lost" and summary["analysed_frames"] > 0
    rows = pd.read_csv(tmp_path / "out" / "rows.csv")
    assert rows["frame"].nunique() == summary["analysed_frames"] and rows["success"].all()


def test_bad_sources_and_outputs_are_one_line_errors(checkpoint, tmp_path, capsys):
    assert live(checkpoint, "ftp://example.invalid/cam", tmp_path / "a") == 2
    assert "unsupported stream address" in capsys.readouterr().err
    assert live(checkpoint, str(tmp_path / "missing.mp4"), tmp_path / "b") == 2
    assert main(["live", "--source", "x.mp4", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--csv", "../x.csv"]) == 2
    assert "not inside" in capsys.readouterr().err
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "live.json").write_text("{}")
    assert live(checkpoint, str(tmp_path / "missing.mp4"), tmp_path / "c") == 2
    assert "earlier run" in capsys.readouterr().err and (tmp_path / "c" / "live.json").read_text() == "{}"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "live.json").symlink_to(tmp_path / "elsewhere.json")  # a dangling link: refused too, as in export
    assert live(checkpoint, str(tmp_path / "missing.mp4"), tmp_path / "d") == 2
    assert "earlier run" in capsys.readouterr().err and not (tmp_path / "elsewhere.json").exists()


def test_latest_slot_newest_wins_and_counts_drops():
    slot = LatestSlot()
    for item in "abc":
        slot.put(item)
    assert slot.get(timeout=1) == "c" and slot.dropped == 2 and slot.put_count == 3
    waiting = threading.Thread(target=lambda: [slot.put(item, wait=True) for item in "de"])
    waiting.start()
    assert slot.get(timeout=1) == "d" and slot.get(timeout=1) == "e"  # waiting puts lose nothing
    waiting.join()
    assert slot.dropped == 2
    with pytest.raises(SourceLost):
        slot.get(timeout=0.05)  # nothing comes: the source hangs
    slot.close(SourceLost("gone"))
    with pytest.raises(SourceLost, match="gone"):
        slot.get(timeout=1)


def test_smoothing_against_hand_computed_values():
    assert SMOOTHERS == CLI_SMOOTHERS
    ema = FaceSmoother("ema", tau=0.2)
    assert ema.smooth(0, 0.0, [0.0, 1.0]).tolist() == [0.0, 1.0]  # the first value passes through
    a = 1 - math.exp(-0.1 / 0.2)  # 0.3935
    np.testing.assert_allclose(ema.smooth(0, 0.1, [1.0, 1.0]), [a, 1.0])
    np.testing.assert_allclose(ema.smooth(7, 0.1, [0.5, 0.5]), [0.5, 0.5])  # another face: its own filter

    euro = FaceSmoother("one-euro", min_cutoff=1.0, beta=5.0)
    euro.smooth(3, 0.0, [0.0])
    a_speed = 1 / (1 + 1 / (2 * math.pi * 1.0 * 0.1))  # d_cutoff 1 Hz, dt 0.1 s: 0.3859
    speed = a_speed * (1.0 - 0.0) / 0.1
    a_value = 1 / (1 + 1 / (2 * math.pi * (1.0 + 5.0 * speed) * 0.1))  # 0.9273
    np.testing.assert_allclose(euro.smooth(3, 0.1, [1.0]), [a_value])
    assert FaceSmoother("none").smooth(3, 0.5, [0.2]).tolist() == [0.2]


def test_smoothed_table_recomputes_occurrences():
    table = pd.DataFrame(
        {"input": "cam", "frame": [0, 1, 1], "time_s": [0.0, 0.1, 0.1], "face": pd.array([0, 0, None], "Int64")}
        | {"success": [1, 1, 0], "AU12": [0.0, 1.0, np.nan], "AU12_c": pd.array([0, 1, pd.NA], "Int64")}
    )
    smoothed = FaceSmoother("ema", tau=0.2).smooth_table(table, ["AU12"], np.array([0.5]))
    assert smoothed["AU12"].iloc[1] == pytest.approx(1 - math.exp(-0.5)) and smoothed["AU12_c"].iloc[1] == 0  # 0.39 < 0.5
    assert pd.isna(smoothed["AU12"].iloc[2]) and table["AU12"].iloc[1] == 1.0  # the input table is unchanged


def test_live_stats_record_each_minute():
    """live.json's "minutes": frames, p50/p95 latency (hand-computed) and memory per minute, for flat-latency checks."""
    stats = LiveStats()
    for latency in (0.010, 0.020, 0.030):
        stats.add(time.perf_counter() - latency, faces=1)
    assert stats.minutes == []
    stats.started -= 120.0  # two minutes later: the first closes with its 3 frames, the second empty
    stats.add(time.perf_counter() - 0.010, faces=1)
    first, second = stats.minutes
    assert (first["minute"], first["analysed"], second["analysed"], second["p50_ms"]) == (1, 3, 0, None)
    assert first["p50_ms"] == pytest.approx(20.0, abs=0.5) and first["p95_ms"] == pytest.approx(29.0, abs=0.5)  # 20 + 0.9 * 10
    assert first["rss_mb"] is None or first["rss_mb"] > 10


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), min_size=3, max_size=3), min_size=0, max_size=6),
    thresholds=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
)
def test_occurrence_columns_match_pandas_masked_assignment(values, thresholds):
    """The (data, mask) construction equals the plain pandas one it replaced: 1/0 at the threshold, <NA> on NaN."""
    array = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=np.float64).reshape(-1, 3)
    columns = ["AU01", "AU02", "AU04"]
    expected = pd.DataFrame(array >= np.array(thresholds), columns=[c + "_c" for c in columns], dtype="Int64")
    expected[np.isnan(array)] = pd.NA
    pd.testing.assert_frame_equal(pd.DataFrame(occurrence_columns(array, np.array(thresholds), columns)), expected)


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["ema", "one-euro"]),
    steps=st.lists(st.tuples(st.floats(1e-3, 2.0), st.floats(0.0, 1.0)), min_size=1, max_size=30),
)
def test_smoothed_values_stay_within_the_inputs(kind, steps):
    """Both filters move each value part of the way to the new input: never outside the range seen (no overshoot)."""
    smoother, time_s, seen = FaceSmoother(kind), 0.0, []
    for dt, value in steps:
        time_s += dt
        seen.append(value)
        out = float(smoother.smooth(0, time_s, [value])[0])
        assert min(seen) - 1e-9 <= out <= max(seen) + 1e-9


def test_terminal_view_updates_under_tmux(checkpoint, tmp_path):
    require("tmux", why="the live terminal view's screen test: apt-get install tmux")
    clip = write_video(tmp_path / "clip.avi", face_leaves_and_returns(FRAMES, AWAY) * 3)  # 9 s at 10 fps
    session = f"auformer-live-{os.getpid()}"
    command = [sys.executable, "-m", "auformer", "live", "--source", str(clip), "--checkpoint", str(checkpoint)]
    command += ["--out", str(tmp_path / "out")]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH")])),
    }
    shell = " ".join(map(str, command)) + "; sleep 30"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", shell], check=True, env=env)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout

    try:
        screens, deadline = [], time.monotonic() + 90
        while time.monotonic() < deadline and len({s for s in screens if "AUs present" in s}) < 3:
            time.sleep(0.5)
            screens.append(screen())
        shown = [s for s in screens if "AUs present" in s]
        assert len(set(shown)) >= 3, screens[-1]  # the table is on screen, and it changes
        assert any("fps analysed" in s and "dropped" in s for s in shown)
        (tmp_path / "screen.txt").write_text(shown[-1])
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): a source URL that fails without a network."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@settings(max_examples=16, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["text", "file", "url", "clip"]),
    keep=st.sampled_from([1.0, 0.6, 0.2]),
    text=st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t),
    content=st.binary(max_size=200),
    scheme=st.sampled_from(["rtsp", "http", "https", "rtmp", "ftp", "file", "javascript"]),
)
def test_hostile_sources_end_in_one_line_and_leave_the_process_as_it_was(checkpoint, frames, kind, keep, text, content, scheme):
    """Any --source: exit 0 or 2 with one `error:` line, nothing outside OUT touched, signal handlers put back."""
    root = Path(tempfile.mkdtemp())
    try:
        if kind == "file":  # bytes under a video name: not a video, or a truncated one
            source = root / "clip.mp4"
            source.write_bytes(content)
        elif kind == "clip":  # a real clip, cut anywhere (a whole one when keep is 1)
            source = write_video(root / "clip.avi", frames[:4])
            data = source.read_bytes()
            source.write_bytes(data[: max(1, round(len(data) * keep))])
        elif kind == "url":
            source = f"{scheme}://127.0.0.1:{_closed_port()}/{text.strip() or 'x'}"
        else:
            source = text
        if kind == "text" and (text.strip().isdigit() or text.strip().startswith("/dev/")):
            return  # a camera index or device: this machine has none, and a test must not wait on one
        run_hostile(["live", "--source", str(source), "--checkpoint", checkpoint, "--out", root / "out", "--duration", "5",
                     "--no-realtime"], root, root / "out")  # fmt: skip
    finally:
        shutil.rmtree(root, ignore_errors=True)
