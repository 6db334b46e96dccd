"""`auformer serve` without a browser: what the page shows for a photo, a video and a bad file.

`auformer.serve.analyse` does all the work behind the page and needs no Gradio; the
browser test (test_serve_browser.py) drives the real page.
"""

from __future__ import annotations

import base64
import os
import signal
import tempfile
import threading
import time

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auformer.cli import build_parser
from auformer.detect import Detector, Frame
from auformer.serve import _stop_on_sigterm, analyse, demo_checkpoint, run_serve, tile_plots
from auformer.serve_live import CSV_NAME, analyse_frame, bars_html, end_session, image_html, new_session, stats_text
from auformer.viz import BOX_COLOR, draw_face_boxes
from media import crossing_faces, png_claiming, tiny_checkpoint, two_faces_photo, write_moving_face_video

AUS = [1, 2, 4, 6, 12]
FACE_FRAMES, BLANK_FRAMES = 6, 3


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    return Detector(tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", AUS))


def test_photo_with_two_faces(detector, tmp_path):
    photo = tmp_path / "two faces.png"
    cv2.imwrite(str(photo), cv2.cvtColor(two_faces_photo(), cv2.COLOR_RGB2BGR))
    result = analyse(detector, photo, tmp_path / "out")
    assert result.status.startswith("**two faces.png**: 2 faces found.")
    assert "- face 0: " in result.status and "- face 1: " in result.status
    table = pd.read_csv(result.csv)
    assert table["input"].tolist() == ["two faces.png"] * 2 and table["face"].tolist() == [0, 1]
    assert table["success"].tolist() == [1, 1] and table[["AU01", "AU12"]].notna().all(axis=None)
    assert [path.name for path in result.face_plots] == ["two faces_face0.png", "two faces_face1.png"]
    assert all(Image.open(path).size[0] > 1000 for path in result.face_plots)  # the detect --plot figure, 150 dpi
    assert result.boxed.shape == (512, 912, 3) and result.timeseries is None
    # Each face's box is drawn where the table says: its top-left corner takes the box colour.
    for _, row in table.iterrows():
        assert tuple(result.boxed[int(round(row["y"])), int(round(row["x"]))]) == BOX_COLOR
    assert sorted(float(x) for x in table["x"])[1] > 512  # one face on each half of the photo


def test_video_gives_time_series_and_preview(detector, tmp_path):
    video = write_moving_face_video(tmp_path / "clip.avi", FACE_FRAMES, BLANK_FRAMES)
    result = analyse(detector, video, tmp_path / "out")
    assert result.status.startswith(
        f"**clip.avi**: {FACE_FRAMES + BLANK_FRAMES} frames analysed, {FACE_FRAMES} with a face, {BLANK_FRAMES} without."
    )
    assert "Shown: frame 0 (0.00 s)" in result.status
    table = pd.read_csv(result.csv)
    assert table["frame"].tolist() == list(range(FACE_FRAMES + BLANK_FRAMES))
    assert table["success"].tolist() == [1] * FACE_FRAMES + [0] * BLANK_FRAMES
    assert result.timeseries.name == "clip_aus.png" and Image.open(result.timeseries).size[1] > 500
    assert result.boxed.shape == (240, 320, 3) and len(result.face_plots) == 1
    every_other = analyse(detector, video, tmp_path / "out2", every=2)
    assert "5 frames analysed (1 in 2), 3 with a face, 2 without." in every_other.status


def test_bad_files_give_a_message_not_an_exception(detector, tmp_path):
    corrupt = tmp_path / "photo.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"not a jpeg" * 50)
    broken_video = tmp_path / "clip.mp4"
    broken_video.write_bytes(b"not a video" * 50)
    (tmp_path / "bomb.png").write_bytes(png_claiming(30_000, 30_000))
    Image.fromarray(np.zeros((10, 10_000, 3), np.uint8)).save(tmp_path / "strip.png")
    for path, message in (
        (corrupt, "photo.jpg: truncated image (the file ends inside the image data)"),
        (tmp_path / "bomb.png", "bomb.png: over the limit of 80,000,000 pixels (raise it with AUFORMER_MAX_PIXELS)"),
        (tmp_path / "strip.png", "strip.png: 10000x10 pixels: one side is more than 20 times the other"),
        (broken_video, "clip.mp4: cannot open video (corrupt, unsupported codec, or no frame rate)"),
        (tmp_path / "gone.png", "gone.png: image file not found"),
    ):
        result = analyse(detector, path, tmp_path / "out")
        assert result.status == f"**Could not analyse this file.** {message}"  # the gate's short reason, no library text
        assert str(tmp_path) not in result.status  # the upload's temporary path is not shown
        assert result.boxed is None and result.csv is None and result.face_plots == []


def test_photo_without_face(detector, tmp_path):
    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 90, dtype=np.uint8))
    result = analyse(detector, blank, tmp_path / "out")
    assert result.status.startswith("**wall.png**: no face found.") and result.face_plots == []
    assert pd.read_csv(result.csv)["success"].tolist() == [0]


def test_draw_face_boxes_marks_only_face_rows():
    image = np.zeros((100, 120, 3), dtype=np.uint8)
    table = pd.DataFrame(
        {"success": [1, 0], "face": [0, None], "x": [10.0, None], "y": [40.0, None], "w": [50.0, None], "h": [30.0, None]}
    )
    boxed = draw_face_boxes(image, table)
    assert tuple(boxed[40, 10]) == tuple(boxed[70, 60]) == BOX_COLOR  # two corners of the box
    assert not boxed[55, 35].any() and not image.any()  # inside the box untouched; input not modified


def test_tile_plots_two_a_row_on_white(tmp_path):
    paths = []
    for index, (height, width) in enumerate([(4, 6), (3, 6), (4, 5)]):
        paths.append(tmp_path / f"{index}.png")
        Image.fromarray(np.full((height, width, 3), 10 * (index + 1), dtype=np.uint8)).save(paths[-1])
    tiled = tile_plots(paths)
    assert tiled.shape == (8, 12, 3)  # 2 rows of 2 cells of the largest plot, 4 x 6
    assert (tiled[:4, :6] == 10).all() and (tiled[:3, 6:] == 20).all() and (tiled[4:, :5] == 30).all()
    assert (tiled[3, 6:] == 255).all() and (tiled[4:, 6:] == 255).all()  # padding and the empty cell are white
    assert tile_plots([]) is None


def test_demo_checkpoint_is_flagged_and_deterministic(tmp_path):
    first, second = Detector(demo_checkpoint(tmp_path / "a")), Detector(demo_checkpoint(tmp_path / "b"))
    assert first.synthetic and len(first.au_columns) == 12
    crop = np.random.default_rng(0).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(first.predict_crops([crop]), second.predict_crops([crop]))


def test_serve_flags_default_to_loopback():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.checkpoint, args.face_detector) == ("127.0.0.1", 7860, None, "auto")
    assert args.max_upload_mb > 0 and args.every == 1


def test_temporary_folder_goes_when_stopped_during_start_up(tmp_path, monkeypatch, capsys):
    """SIGTERM while the model loads (before Gradio is up): the folder is deleted, the command ends without a
    traceback. (Before, the handler came after start-up: SIGTERM's default action left the folder behind.)"""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    handler = []

    def stop_when_the_folder_exists() -> None:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("auformer-serve-*")) and time.monotonic() < deadline:
            time.sleep(0.001)
        handler.append(signal.getsignal(signal.SIGTERM))
        # Without a handler of its own SIGTERM would end pytest: then stop the server with Ctrl-C instead.
        os.kill(os.getpid(), signal.SIGTERM if handler[0] is _stop_on_sigterm else signal.SIGINT)

    threading.Thread(target=stop_when_the_folder_exists, daemon=True).start()
    try:
        run_serve(build_parser().parse_args(["serve", "--port", "0"]))
    except KeyboardInterrupt:
        pass
    assert handler == [_stop_on_sigterm]  # SIGTERM was handled as soon as the folder existed
    printed = capsys.readouterr().out
    assert "open http://" not in printed and "stopped" in printed  # really stopped during start-up
    assert not list(tmp_path.glob("auformer-serve-*")) and "deleted" in printed
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # the handler is put back


def test_live_frames_keep_ids_per_session_and_write_only_the_csv(detector, tmp_path):
    """The Live tab's per-frame work (`auformer.serve_live`), without Gradio: two faces crossing, in two
    sessions (two browser tabs) fed in turn; each keeps its own ids, rows and CSV, and nothing but the CSVs is written."""
    frames, centres = crossing_faces(count=8)  # (frames, 2 people, x/y): the astronaut starts left
    first, second = new_session(detector, tmp_path), new_session(detector, tmp_path)
    ids_by_person = {0: set(), 1: set()}
    for index, image in enumerate(frames):
        boxed, table = analyse_frame(detector, first, image, time.perf_counter())
        if index >= 3:  # the second tab opens later: its numbering starts afresh
            analyse_frame(detector, second, frames[index - 3], time.perf_counter())
        faces = table[table["success"] == 1]
        assert len(faces) == 2 and boxed.shape == image.shape and not np.array_equal(boxed, image)
        for _, row in faces.iterrows():
            assert tuple(boxed[int(round(row["y"])), int(round(row["x"]))]) == BOX_COLOR  # boxed where the row says
            box_centre = np.array([row["x"] + row["w"] / 2, row["y"] + row["h"] / 2])
            person = int(np.argmin(np.linalg.norm(centres[index] - box_centre, axis=1)))
            ids_by_person[person].add(int(row["face"]))
    assert ids_by_person[0] != ids_by_person[1] and all(len(ids) == 1 for ids in ids_by_person.values())  # stable ids
    rows, other = pd.read_csv(first.writer.path), pd.read_csv(second.writer.path)
    assert first.writer.path != second.writer.path and len(rows) == 16 and len(other) == 10
    assert rows["frame"].tolist() == [i for i in range(8) for _ in range(2)] and set(rows["input"]) == {"webcam"}
    assert set(rows["face"]) == {0, 1} and set(other["face"]) == {0, 1}  # the second tab's ids start at 0 too
    assert list(rows.columns) == list(detector.empty_table().columns)  # detect's columns
    assert first.stats.analysed == 8 and first.last_ms > 0 and stats_text(first, 2).startswith("frame 7 · ")
    # The page's pieces: the frame as a data URL (not a file), a bar per face and AU.
    html = image_html(boxed)
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(html.split("base64,")[1].split('"')[0]), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == boxed.shape
    bars = bars_html(detector, table)
    assert bars.count('class="au-row"') == 2 * len(detector.au_columns) and 'data-face="0"' in bars and 'data-face="1"' in bars
    assert "AU12 Lip Corner Puller" in bars and "No face" in bars_html(
        detector, detector.frame_table(Frame("w", 0, 0, frames[0]), [])
    )
    written = sorted(path.name for path in tmp_path.rglob("*") if path.is_file())
    assert written == [CSV_NAME, CSV_NAME]  # no frame on disk
    end_session(second)
    assert not second.writer.path.parent.exists() and first.writer.path.is_file()
