"""`auformer serve`: a local web page where a person drops a photo or a video and sees its AUs.

The page is a Gradio app (the framework ML users know; no hand-written HTTP) over the
same `Detector` and plots that `auformer detect --plot` uses: each face boxed on the
photo, one AU bar chart per face (FACS names, threshold tick), a video's AU time series,
and the table as a CSV download. `analyse` does the work and knows nothing of Gradio,
so it is tested without a browser; `build_app` only lays out the page. The Live tab (the
browser's webcam, analysed as it streams, in memory) is `auformer.serve_live`.

Uploads and results live in one temporary folder (Gradio's upload folder is pointed
into it) that is deleted when the server stops, by Ctrl-C or SIGTERM, also while it is
still starting. Uploads are read through the image gate (`auformer.data.images`): a bad
file shows the gate's short reason on the page, never a library's message.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from auformer.aus import au_label
from auformer.config import load_config
from auformer.data.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from auformer.data.synthetic_appearance import SYNTHETIC_AUS
from auformer.detect import Detector, Frame, count_video_frames, parse_thresholds, read_image, video_frames
from auformer.detect.detector import INTENSITY_SUFFIX, SYNTHETIC_WARNING
from auformer.errors import AUFormerError, BadImageError
from auformer.model.auformer import build_model
from auformer.model.checkpoint import save_checkpoint
from auformer.serve_live import build_live_tab, live_tab_head
from auformer.viz import draw_face_boxes, plot_au_timeseries

if TYPE_CHECKING:
    import gradio as gr

DEMO_BANNER = (
    "**Demo model: its predictions mean nothing on real faces.** No `--checkpoint` was given, so this "
    "page runs untrained MoKE adapters on the small synthetic-face ViT that ships with auformer. It shows "
    "how the page works, nothing more. For real predictions start it with "
    "`auformer serve --checkpoint runs/<run>/best` (a model trained on real faces)."
)
INTRO = (
    "# AUFormer: facial Action Units\n"
    "Drop a photo or a video. Every face found is boxed and numbered; each face gets a bar per Action Unit "
    "(red: present, at or above the black threshold tick). A video also gets the AU time series of each "
    "face, which keeps its number while it stays in view. The table of every face and frame is a CSV download below."
)


@dataclass
class Analysis:
    """What the page shows for one upload."""

    status: str  # Markdown: what was found, or why the file could not be read
    boxed: np.ndarray | None = None  # (H, W, 3) RGB photo (or a video's preview frame) with the faces boxed
    face_plots: list[Path] = field(default_factory=list)  # one AU bar chart per boxed face, in face order
    timeseries: Path | None = None  # a video's AU time series
    csv: Path | None = None  # the detection table (auformer columns)


def demo_checkpoint(folder: str | os.PathLike) -> Path:
    """The default model without ``--checkpoint``: untrained adapters on the packaged synthetic-face ViT.

    Built from the ``synthetic`` preset's model settings with a fixed seed (the same
    numbers on every start), saved to ``folder/demo`` so it loads like any checkpoint,
    and marked ``dataset: synthetic`` so the Detector flags it. Its predictions mean nothing.
    """
    config = load_config("synthetic")
    aus = config.data.aus or SYNTHETIC_AUS
    with torch.random.fork_rng():  # leave the caller's random state alone
        torch.manual_seed(0)
        model = build_model(
            len(aus),
            backbone=config.model.backbone,
            backbone_weights=config.model.backbone_weights,
            img_size=config.data.img_size,
            aus=aus,
            backbone_kwargs=config.model.backbone_kwargs,
        )
    path = Path(folder) / "demo"
    save_checkpoint(model, path, extra={"dataset": "synthetic", "resize_size": config.data.resize_size})
    return path


def _face_plots(detector: Detector, table: pd.DataFrame, faces: list, out: Path, stem: str, prefix: str = "") -> list[Path]:
    """The per-face AU plots of ``table`` (faces in the order of its ``success=1`` rows)."""
    note = " (demo/synthetic model: not meaningful)" if detector.synthetic else ""
    return detector.plot_faces(
        table, faces, lambda row: out / f"{stem}_face{row['face']}.png", lambda row: f"{prefix}face {row['face']}{note}"
    )


def tile_plots(paths: list[Path], columns: int = 2) -> np.ndarray | None:
    """The per-face plots side by side, ``columns`` a row, on white: (H, W, 3) uint8 RGB, None for no plot.

    One picture rather than a Gradio gallery: a gallery shows each plot in a square
    cell, and a single face across the whole page width.
    """
    if not paths:
        return None
    images = [np.asarray(Image.open(path).convert("RGB")) for path in paths]
    height, width = max(image.shape[0] for image in images), max(image.shape[1] for image in images)
    rows = -(-len(images) // columns)  # ceil
    tiled = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for index, image in enumerate(images):
        top, left = (index // columns) * height, (index % columns) * width
        tiled[top : top + image.shape[0], left : left + image.shape[1]] = image
    return tiled


def _present(detector: Detector, row: pd.Series) -> str:
    """The AUs of one face row that the detector called present (``AU01_c``), as FACS labels; for an
    intensity-only checkpoint the AUs with an intensity of at least 1 (FACS A)."""
    if detector.occurrence:
        labels = [au_label(column) for column in detector.au_columns if row[column + "_c"] == 1]
    else:
        labels = [au_label(column) for column in detector.au_columns if row[column + INTENSITY_SUFFIX] >= 1]
    return ", ".join(labels) or "none"


def _analyse_photo(detector: Detector, path: Path, out: Path) -> Analysis:
    image = read_image(path)
    ((table, faces),) = detector.iter_results([Frame(path.name, 0, 0.0, image)])
    csv = out / f"{path.stem}.csv"
    table.to_csv(csv, index=False, float_format="%.6g")
    if not faces:
        return Analysis(
            f"**{path.name}**: no face found. Try a photo where the face is larger, frontal and well lit.", boxed=image, csv=csv
        )
    lines = [f"**{path.name}**: {len(faces)} face{'s' * (len(faces) > 1)} found."]
    lines += [f"- face {row['face']}: {_present(detector, row)}" for _, row in table[table["success"] == 1].iterrows()]
    return Analysis("\n".join(lines), draw_face_boxes(image, table), _face_plots(detector, table, faces, out, path.stem), csv=csv)


def _analyse_video(detector: Detector, path: Path, out: Path, every: int) -> Analysis:
    """One pass over the video (faces tracked between detections, batched across frames); the preview is
    the first frame with the most faces, decoded once more for its picture."""
    frames = (Frame(path.name, f.index, f.time_s, f.image) for f in video_frames(path, every))  # the CSV names the upload
    tables, preview = [], None  # preview: (frame number, time, its rows, its faces)
    # The bar advances here, in the request's thread, as results arrive (decoding runs in a worker
    # thread, where Gradio's tqdm tracking would not see it); a frame's rows never span two tables.
    progress = tqdm(total=count_video_frames(path, every), desc=path.name, unit="frame")
    for table, faces in detector.iter_results(frames):
        progress.update(table["frame"].nunique())
        tables.append(table)
        found = table[table["success"] == 1]
        for index, rows in found.groupby("frame", sort=False):
            if preview is None or len(rows) > len(preview[3]):
                chosen = (found["frame"] == index).to_numpy()
                preview = (index, rows["time_s"].iloc[0], rows, [face for face, keep in zip(faces, chosen) if keep])
    progress.close()
    if not tables:
        raise AUFormerError(f"{path.name}: no frame could be decoded")
    table = pd.concat(tables, ignore_index=True)
    csv = out / f"{path.stem}.csv"
    table.to_csv(csv, index=False, float_format="%.6g")
    timeseries = plot_au_timeseries(table, out / f"{path.stem}_aus.png", dict(zip(detector.au_columns, detector.thresholds)))
    frame_count = table["frame"].nunique()
    with_face = table.loc[table["success"] == 1, "frame"].nunique()
    status = (
        f"**{path.name}**: {frame_count} frames analysed"
        + (f" (1 in {every})" if every > 1 else "")
        + f", {with_face} with a face, {frame_count - with_face} without."
    )
    if preview is None:
        return Analysis(status + " No face in any frame.", timeseries=timeseries, csv=csv)
    index, time_s, frame_table, faces = preview
    status += f" Shown: frame {index} ({time_s:.2f} s), the first with the most faces ({len(faces)})."
    plots = _face_plots(detector, frame_table, faces, out, f"{path.stem}_frame{index}", f"frame {index}, ")
    image = next(video_frames(path, after=index - 1)).image  # (H, W, 3) of the preview frame
    return Analysis(status, draw_face_boxes(image, frame_table), plots, timeseries, csv)


def analyse(detector: Detector, path: str | os.PathLike, out: str | os.PathLike, every: int = 1) -> Analysis:
    """Run ``detector`` on one uploaded photo or video and write its CSV and plots into ``out``.

    A file that cannot be read gives an `Analysis` whose status says so in one short line
    (the file's name and the image gate's reason), never an exception: the page shows the
    message and stays usable.
    """
    path, out = Path(path), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        if path.suffix.lower() in VIDEO_EXTENSIONS:
            return _analyse_video(detector, path, out, every)
        return _analyse_photo(detector, path, out)
    except BadImageError as error:
        return Analysis(f"**Could not analyse this file.** {path.name}: {error.reason}")
    except (AUFormerError, FileNotFoundError) as error:
        message = str(error).replace(str(path), path.name)  # the upload's temporary path means nothing to the user
        return Analysis(f"**Could not analyse this file.** {message}")


def build_app(detector: Detector, work: Path, banner: str | None, every: int = 1) -> gr.Blocks:
    """The page: a tab for photos and videos, and the Live tab (`auformer.serve_live`) for the webcam."""
    import gradio as gr

    def on_upload(upload: str | None, progress: gr.Progress = gr.Progress(track_tqdm=True)) -> tuple:  # noqa: B008 (Gradio injects it)
        if upload is None:  # the file was removed from the upload box
            return "", None, None, gr.Column(visible=False), None, None
        result = analyse(detector, upload, tempfile.mkdtemp(dir=work, prefix="result-"), every)
        return (
            result.status,
            result.boxed,
            tile_plots(result.face_plots),
            gr.Column(visible=result.timeseries is not None),
            result.timeseries and str(result.timeseries),
            result.csv and str(result.csv),
        )

    extensions = sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)
    with gr.Blocks(title="auformer: facial Action Units", analytics_enabled=False) as app:
        gr.Markdown(INTRO)
        if banner:
            gr.Markdown(banner, elem_id="banner")
        with gr.Tab("Photo or video", elem_id="files-tab"):
            _files_tab(gr, on_upload, extensions)
        with gr.Tab("Live", elem_id="live-tab"):
            build_live_tab(detector, work)
    return app


def _files_tab(gr, on_upload: Callable, extensions: list[str]) -> None:
    """The photo/video tab: upload on the left, status and boxed faces beside it, then bars, time series and CSV."""
    with gr.Row():
        with gr.Column(scale=1):
            upload = gr.File(
                label=f"Photo or video ({', '.join(extensions)})", file_types=extensions, type="filepath", elem_id="upload"
            )
            status = gr.Markdown(elem_id="status")
            csv = gr.File(label="AU table (CSV): one row per face and frame", interactive=False, elem_id="csv")
        boxed = gr.Image(label="Faces found", type="numpy", interactive=False, scale=1, elem_id="boxed")
    # Headings rather than labels: Gradio draws an image's label over the plot's own title.
    gr.Markdown("### AU bars per face\nRed: present (at or above the black threshold tick). Grey: absent.")
    bars = gr.Image(label="AU bars per face", show_label=False, type="numpy", interactive=False, elem_id="bars")
    with gr.Column(visible=False) as video_only:
        gr.Markdown("### AU time series, one line per face")
        timeseries = gr.Image(label="AU time series", show_label=False, type="filepath", interactive=False, elem_id="timeseries")
    upload.change(on_upload, upload, [status, boxed, bars, video_only, timeseries, csv])


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # Gradio closes the server on it, and `run_serve` then deletes the uploads


def run_serve(args: argparse.Namespace) -> None:
    """``auformer serve``: start the page on ``args.host:args.port`` and block until stopped.

    The temporary folder goes whenever the command ends: stopped (Ctrl-C, SIGTERM) while
    serving or still starting (loading the model, importing Gradio), or failed.
    """
    if args.max_upload_mb <= 0 or args.every < 1:
        raise AUFormerError(
            f"--max-upload-mb must be positive and --every at least 1 (got {args.max_upload_mb} and {args.every})"
        )
    # Before the folder exists: SIGTERM's default action would end the process without the clean-up below.
    previous_handler = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    work, app = None, None
    try:
        work = Path(tempfile.mkdtemp(prefix="auformer-serve-"))
        # Gradio reads its upload folder from the environment when it is imported: set it first.
        os.environ["GRADIO_TEMP_DIR"] = str(work / "uploads")
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # no telemetry or version check from a local tool
        checkpoint = args.checkpoint or demo_checkpoint(work)
        detector = Detector(
            checkpoint,
            face_detector=args.face_detector,
            device=args.device,
            threshold=parse_thresholds(args.threshold),
            backbone_weights=args.backbone_weights,
            runtime=args.runtime,
        )
        detector.warm_up()  # the Live tab's first frame is not the one that loads the network and face detector
        banner = DEMO_BANNER if args.checkpoint is None else (SYNTHETIC_WARNING if detector.synthetic else None)
        app = build_app(detector, work, banner, args.every)
        try:
            app.launch(
                server_name=args.host,
                server_port=args.port,
                max_file_size=int(args.max_upload_mb * 2**20),
                show_error=True,
                quiet=True,
                head=live_tab_head(),
                prevent_thread_lock=True,
            )
        except OSError as error:
            raise AUFormerError(
                f"cannot start the server on {args.host}:{args.port}: the port is in use or the host is not an "
                f"address of this computer; choose another --port or --host"
            ) from error
        print(
            f"model: {'demo (untrained, synthetic-face ViT)' if args.checkpoint is None else args.checkpoint}; "
            f"AUs: {', '.join(detector.au_columns)}; uploads up to {args.max_upload_mb:g} MB"
        )
        print(f"uploads and results in {work} (deleted when the server stops)")
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {args.host}: other machines that can reach this one can use the page")
        print(f"open http://{args.host}:{app.server_port} in a browser; Ctrl-C stops the server", flush=True)
        app.block_thread()
    except KeyboardInterrupt:
        print("stopped", flush=True)  # while serving, Gradio handles Ctrl-C itself; this is a stop during start-up
    finally:
        if app is not None:
            app.close(verbose=False)  # a no-op unless it was launched
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
            print(f"deleted {work}", flush=True)
        signal.signal(signal.SIGTERM, previous_handler)
