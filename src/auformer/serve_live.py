"""The Live tab of `auformer serve`: the browser's webcam streamed to the model, frame by frame, in memory.

Gradio's webcam streaming (``gr.Image(sources=["webcam"], streaming=True)`` and its ``.stream``
event) sends each captured frame as a JPEG data URL inside the event's message; with
``type="numpy"`` Gradio decodes it in memory (`gradio.image_utils.preprocess_image`), never
through its upload folder. What goes back is HTML with the boxed frame as a data URL, not a
``gr.Image``: Gradio saves an image output to its cache folder as a file
(`gradio.image_utils.postprocess_image`), and frames must never touch the disk. The one file
written is the session's CSV (``detect``'s columns, the `CsvWriter` of ``live --csv``), in
serve's temporary folder.

Per frame, as in ``auformer live``: faces detected every K-th frame and tracked between
(`FaceTracker`: stable ids), the network, per-face One-Euro smoothing. Each browser session
(``gr.State``) has its own tracker, smoothers, counts and CSV, so two tabs never mix face
ids. One stream is analysed at a time (concurrency 1); Gradio hands the function the newest
frame whenever it is free, so the latency stays bounded when the model is slower than the
camera.

The camera's state (denied, lost, stopped) is known only in the browser: `CAMERA_HEAD`, put
in the page's head, wraps ``getUserMedia`` and writes one line into the tab's camera status.
"""

from __future__ import annotations

import base64
import html
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import pandas as pd

from auformer.aus import au_label
from auformer.detect.detector import INTENSITY_SUFFIX, Detector
from auformer.detect.live import LiveStats
from auformer.detect.smoothing import FaceSmoother, face_smoothers, smooth_results
from auformer.detect.sources import Frame
from auformer.detect.writers import CsvWriter
from auformer.faces import TEMPLATE_SIZE, align_faces
from auformer.faces.track import FaceTracker
from auformer.viz import ABSENT_COLOR, INTENSITY_COLOR, OCCURS_COLOR, draw_face_boxes

if TYPE_CHECKING:
    import gradio as gr

STREAM_EVERY = 0.1  # s between frames the browser sends; the server takes the newest when it is free
JPEG_QUALITY = 80  # of the boxed frame sent back
INPUT_NAME = "webcam"  # the CSV's ``input`` column
CSV_NAME = "live-session.csv"
LIVE_INTRO = (
    "### Live: your webcam, analysed as it streams\n"
    "Click the camera box to allow the webcam, then press Record. Each face is boxed with its number, which it keeps while it stays in view; "
    "its AU bars update with every analysed frame (smoothed over time, One-Euro). "
    "**Frames stay in memory and are never saved:** only the rows of the CSV are written, into the server's "
    "temporary folder, deleted when the server stops."
)
CAMERA_OFF = "Camera off: click the camera box to allow the webcam, then press Record."
STALLED_S = 5  # s without a new result while streaming: the page says the stream stopped
# The camera's state, written by the browser into #live-camera-status (the server cannot see it).
CAMERA_MESSAGES = {
    "on": "Camera on: press Record to stream its frames to the model.",
    "streaming": "Streaming: frames go to the model as they come.",
    "stopped": "Camera stopped. The last result stays below; press Record to start again.",
    "stalled": f"No new result for {STALLED_S} s: the stream stopped (the camera or the connection to the server was "
    "lost). The last result stays below.",
    "lost": "Camera lost: it stopped sending frames (unplugged, or taken by another program). "
    "The last result stays below; click the camera box and press Record to start again.",
    "denied": "Camera access denied: allow the camera for this page in the browser's site settings, then reload "
    "the page. The last result stays below.",
    "error": "The camera could not be opened (in use by another program, or none is connected). The last result stays below.",
    "unavailable": "This browser gives this page no camera: a page served over plain http from another machine "
    "cannot use one. Open it on this computer at http://127.0.0.1, or serve it over https.",
}
# Hand-written: no library reports a camera's loss or refusal to the page; the browser's own
# events do (a rejected getUserMedia, a video track's "ended"), so the page listens for them.
CAMERA_HEAD = """<script>
(() => {
  const messages = %s, stalledMs = %d;
  let state = "off", lastStats = null, lastChange = 0;
  const say = (next) => {
    state = next;
    const show = () => {
      const element = document.getElementById("live-camera-status");
      if (!element) return false;
      element.textContent = messages[next];
      element.dataset.state = next;
      return true;
    };
    if (!show()) { const timer = setInterval(() => show() && clearInterval(timer), 200); }
  };
  // Gradio's Record/Stop button: streaming starts or stops (the camera itself stays open).
  document.addEventListener("click", (event) => {
    const button = event.target.closest && event.target.closest("#live-camera button.capture-button");
    if (!button) return;
    const stopping = button.textContent.includes("Stop");
    if (stopping && ["streaming", "stalled"].includes(state)) say("stopped");
    if (!stopping && ["on", "stopped", "stalled"].includes(state)) { lastChange = Date.now(); say("streaming"); }
  }, true);
  // While streaming, results must keep coming: else say so (a camera that froze, a server gone).
  setInterval(() => {
    const stats = document.getElementById("live-stats");
    const text = stats ? stats.textContent : null;
    if (text !== lastStats) { lastStats = text; lastChange = Date.now(); }
    if (state === "streaming" && Date.now() - lastChange > stalledMs) say("stalled");
    if (state === "stalled" && Date.now() - lastChange < stalledMs) say("streaming");
  }, 500);
  const media = navigator.mediaDevices;
  if (!media || !media.getUserMedia) { say("unavailable"); return; }
  const open = media.getUserMedia.bind(media);
  media.getUserMedia = async (constraints) => {
    if (!constraints || !constraints.video) return open(constraints);
    let stream;
    try {
      stream = await open(constraints);
    } catch (error) {
      say(error.name === "NotAllowedError" || error.name === "SecurityError" ? "denied" : "error");
      throw error;
    }
    say("on");
    for (const track of stream.getVideoTracks()) track.addEventListener("ended", () => say("lost"));
    return stream;
  };
})();
</script>"""


@dataclass
class LiveSession:
    """One browser session's state: its faces' ids, their smoothing, its counts and its CSV."""

    tracker: FaceTracker
    smoothers: dict[str, FaceSmoother]
    writer: CsvWriter
    stats: LiveStats = field(default_factory=LiveStats)
    frames: int = 0  # frames analysed, the next frame's number
    last_ms: float = float("nan")  # the last frame's latency


def new_session(detector: Detector, work: Path, smooth: str = "one-euro") -> LiveSession:
    """A fresh session whose CSV goes into a folder of its own under ``work``."""
    folder = Path(tempfile.mkdtemp(dir=work, prefix="live-"))
    return LiveSession(
        FaceTracker(detector.face_detector, detector.detect_every),
        face_smoothers(smooth),
        CsvWriter(folder / CSV_NAME, openface=False),
    )


def end_session(session: LiveSession | None) -> None:
    """Delete a closed session's CSV (Gradio calls this when the browser session ends)."""
    if session is not None:
        shutil.rmtree(session.writer.path.parent, ignore_errors=True)


def analyse_frame(detector: Detector, session: LiveSession, image: np.ndarray, arrived: float) -> tuple[np.ndarray, pd.DataFrame]:
    """The (H, W, 3) RGB ``image`` with its faces boxed and its smoothed result table; its rows go to the CSV.

    ``arrived``: `time.perf_counter` when the frame reached the server, the start of its latency.
    """
    frame = Frame(INPUT_NAME, session.frames, arrived - session.stats.started, image)
    aligned = align_faces(image, session.tracker, size=TEMPLATE_SIZE)
    table = smooth_results(detector, session.smoothers, detector.frame_table(frame, aligned))
    session.writer.write(table)  # appended and closed per frame, as `live --csv`
    boxed = draw_face_boxes(image, table)
    session.frames += 1
    session.stats.add(arrived, len(aligned))
    session.last_ms = session.stats.latencies[-1] * 1000
    return boxed, table


def image_html(image: np.ndarray) -> str:
    """An ``<img>`` of the (H, W, 3) RGB ``image`` as a JPEG data URL: shown without a file."""
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok  # noqa: S101  (a uint8 RGB array always encodes)
    data = base64.b64encode(jpeg.tobytes()).decode()
    return f'<img src="data:image/jpeg;base64,{data}" alt="the last analysed frame, faces boxed" style="width:100%">'


def _bar(label: str, value: float, scale: float, color: str, tick: float | None) -> str:
    """One AU's row: its name, a bar ``value / scale`` long, the threshold tick, the value."""
    width = 100 * min(max(value / scale, 0.0), 1.0)
    tick_html = (
        f'<div style="position:absolute;left:{100 * tick:.1f}%;top:-2px;bottom:-2px;width:2px;background:#000"></div>'
        if tick is not None
        else ""
    )
    return (
        '<div class="au-row" style="display:flex;align-items:center;gap:8px;margin:2px 0;font-size:13px">'
        f'<span style="width:210px;white-space:nowrap;overflow:hidden">{html.escape(label)}</span>'
        '<div style="position:relative;flex:1;height:14px;background:#eee">'
        f'<div class="au-bar" style="width:{width:.1f}%;height:100%;background:{color}"></div>{tick_html}</div>'
        f'<span style="width:40px;text-align:right">{value:.2f}</span></div>'
    )


def bars_html(detector: Detector, table: pd.DataFrame) -> str:
    """Each face's AU bars: probabilities (red at or above the black threshold tick, grey below), else
    intensities 0-5 (blue)."""
    faces = table[table["success"] == 1]
    if faces.empty:
        return '<p class="no-face">No face in this frame.</p>'
    cards = []
    for _, row in faces.iterrows():
        rows = []
        for column, threshold in zip(detector.au_columns, detector.thresholds):
            label = au_label(column)
            if detector.occurrence:
                value = float(row[column])
                rows.append(_bar(label, value, 1.0, OCCURS_COLOR if value >= threshold else ABSENT_COLOR, float(threshold)))
            else:
                rows.append(_bar(label, float(row[column + INTENSITY_SUFFIX]), 5.0, INTENSITY_COLOR, None))
        cards.append(
            f'<div class="face-bars" data-face="{row["face"]}" style="flex:1;min-width:320px">'
            f'<h4 style="margin:4px 0">face {row["face"]}</h4>{"".join(rows)}</div>'
        )
    return f'<div style="display:flex;flex-wrap:wrap;gap:16px">{"".join(cards)}</div>'


def stats_text(session: LiveSession, faces: int) -> str:
    """The line under the frame: frame number, analysed fps, the server's latency, faces in view."""
    stats = session.stats
    return (
        f"frame {session.frames - 1} · {stats.fps():.1f} fps analysed · latency {session.last_ms:.0f} ms "
        f"(p50 {stats.latency_ms(0.5):.0f}, p95 {stats.latency_ms(0.95):.0f}; from the frame's arrival at the server "
        f"to its result) · {faces} face{'s' * (faces != 1)} in view"
    )


def build_live_tab(detector: Detector, work: Path) -> None:
    """The Live tab's components and events, inside the caller's ``gr.Blocks`` and ``gr.Tab``."""
    import gradio as gr

    def on_frame(image: np.ndarray | None, session: LiveSession | None) -> tuple:
        arrived = time.perf_counter()
        if image is None:
            return gr.skip(), gr.skip(), gr.skip(), session
        session = session or new_session(detector, work)
        boxed, table = analyse_frame(detector, session, image, arrived)
        faces = int((table["success"] == 1).sum())
        return image_html(boxed), bars_html(detector, table), stats_text(session, faces), session

    def on_download(session: LiveSession | None) -> gr.File:
        if session is None or not session.writer.path.is_file():
            return gr.File(value=None, visible=True, label="No frame analysed yet: start the camera first")
        return gr.File(
            value=str(session.writer.path), visible=True, label="The session's AU table (CSV): one row per face and frame"
        )

    gr.Markdown(LIVE_INTRO)
    gr.HTML(f'<p id="live-camera-status" data-state="off">{html.escape(CAMERA_OFF)}</p>', js_on_load=None)
    session = gr.State(None, delete_callback=end_session)
    with gr.Row():
        camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Your camera", elem_id="live-camera", scale=1)
        with gr.Column(scale=1):
            frame = gr.HTML(js_on_load=None, elem_id="live-frame")
            stats = gr.Markdown(elem_id="live-stats")
    gr.Markdown("### AU bars per face\nRed: present (at or above the black threshold tick). Grey: absent.")
    bars = gr.HTML(js_on_load=None, elem_id="live-bars")
    with gr.Row():
        download = gr.Button("Download the session's CSV", elem_id="live-download", scale=0)
        csv = gr.File(label="The session's AU table (CSV)", interactive=False, visible=False, elem_id="live-csv")
    camera.stream(
        on_frame,
        [camera, session],
        [frame, bars, stats, session],
        stream_every=STREAM_EVERY,
        concurrency_limit=1,
        concurrency_id="live",
        show_progress="hidden",
    )
    download.click(on_download, session, csv)


def live_tab_head() -> str:
    """The page's ``<head>`` addition: the camera watcher (`CAMERA_HEAD`) with its messages."""
    import json

    return CAMERA_HEAD % (json.dumps(CAMERA_MESSAGES), STALLED_S * 1000)
