"""Detector: images, folders and videos -> a table of AU probabilities per face and frame.

Pipeline per frame: face detection (in videos every ``detect_every``-th frame, the
faces tracked in between: `auformer.faces.track`) and five-point alignment
(`auformer.faces`, the same code the dataset converters use), the training-time test
transform, batched AUFormer inference. Decoding, face finding and the network run
at the same time in three threads (OpenCV, dlib and torch release the GIL).
Every frame gives at least one row: frames without a face get one row with
``success=0`` and empty face and AU columns, never a silent gap.

Table columns (``auformer`` format)::

    input, frame, time_s, face, x, y, w, h, face_score, success, AU01, ..., AU01_c, ..., AU01_r, ...

``AU01`` probabilities and ``AU01_c`` occurrences come from occurrence heads, ``AU01_r``
intensities (0-5, OpenFace's name) from intensity heads (``model.task``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from auformer.aus import au_column, au_columns
from auformer.data.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, open_video, read_rgb
from auformer.data.transforms import build_transform
from auformer.errors import AUFormerError
from auformer.faces import DEFAULT_DETECTOR, TEMPLATE_SIZE, AlignedFace, Face, align_faces, get_detector
from auformer.faces.track import FaceTracker
from auformer.files import UniqueNames, atomic_write_text, check_apart, resolve_inside
from auformer.model.checkpoint import checkpoint_paths, file_sha256, load_checkpoint, read_checkpoint_meta, resolve_checkpoint

FACE_COLUMNS = ["input", "frame", "time_s", "face", "x", "y", "w", "h", "face_score", "success"]
INTENSITY_SUFFIX = "_r"  # AU12_r: intensity 0-5, as OpenFace names it
# auformer name -> OpenFace name (OpenFace's frame numbers start at 1).
OPENFACE_NAMES = {"face": "face_id", "time_s": "timestamp", "face_score": "confidence"}
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}  # --amp: autocast dtype of the model's forward
PREFETCH = 16  # frames each pipeline stage may run ahead of the next (16 decoded 1080p frames: 100 MB)
SUMMARY_NAME = "detect.json"  # in OUT: what wrote the CSVs (checkpoint hash, format, columns), counts, skipped inputs
IMAGES_CSV = "images.csv"
SYNTHETIC_WARNING = (
    "warning: this checkpoint was trained on synthetic faces: its AU predictions on real "
    "photos are not meaningful (it only shows that the pipeline runs)"
)


@dataclass
class Frame:
    """One image to analyse: a photo, or one decoded video frame."""

    input: str  # file path, or "<array>" for arrays passed to the API
    index: int  # frame number in the video (0 for photos)
    time_s: float  # seconds from the start of the video (0 for photos)
    image: np.ndarray  # (H, W, 3) uint8 RGB


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB: the decoder training uses (:func:`auformer.data.images.read_rgb`)."""
    return read_rgb(path)


def _frame_range(fps: float, start: float | None, end: float | None) -> tuple[int, int | None]:
    """First and last (exclusive, None = to the end) frame numbers of ``start``-``end`` seconds."""
    return round((start or 0.0) * fps), (round(end * fps) if end is not None else None)


def video_frames(
    path: str | os.PathLike, every: int = 1, start: float | None = None, end: float | None = None, after: int | None = None
) -> Iterator[Frame]:
    """Decode every ``every``-th frame of a video between ``start`` and ``end`` seconds.

    ``after`` (a resumed run) skips the frames up to and including that frame number,
    keeping the ``every`` grid. A stream that stops before the container's frame count
    raises an :class:`AUFormerError` after the frames it did decode.
    """
    if every < 1:
        raise AUFormerError(f"every must be a positive integer, got {every}")
    capture = open_video(path)  # the image gate's size checks, before a frame is decoded
    fps = capture.get(cv2.CAP_PROP_FPS)
    first, last = _frame_range(fps, start, end)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if first > 0:
        capture.set(cv2.CAP_PROP_POS_FRAMES, first)
    index = first
    try:
        while last is None or index < last:
            if (index - first) % every or (after is not None and index <= after):
                ok = capture.grab()  # skipped frame: advance without decoding the image
            else:
                ok, image_bgr = capture.read()
                if ok:
                    yield Frame(str(path), index, index / fps, cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
            if not ok:
                break
            index += 1
    finally:
        capture.release()
    expected = total if last is None else min(total, last)
    if index < expected:
        raise AUFormerError(f"{path}: decoding stopped at frame {index} of {expected} (truncated or corrupt video)")


def count_video_frames(
    path: str | os.PathLike, every: int = 1, start: float | None = None, end: float | None = None
) -> int | None:
    """How many frames `video_frames` will yield, from the container's frame count (None if unknown)."""
    capture = cv2.VideoCapture(str(path))
    fps, total = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    if not fps > 0 or total <= 0:
        return None
    first, last = _frame_range(fps, start, end)
    last = total if last is None else min(total, last)
    return max(0, -(-(last - first) // every))  # ceil((last - first) / every)


def parse_thresholds(values: Iterable[str]) -> float | dict[str, float]:
    """CLI ``--threshold`` values: ``0.6`` (all AUs), ``AU12=0.4`` (one AU), or both (``default`` + overrides)."""
    thresholds: dict[str, float] = {}
    for value in values:
        key, _, number = value.rpartition("=")
        try:
            threshold = float(number)
        except ValueError:
            raise AUFormerError(f"bad --threshold {value!r}: expected a number like 0.5 or AU12=0.4") from None
        thresholds[au_column(key) if key else "default"] = threshold
    if set(thresholds) <= {"default"}:
        return thresholds.get("default", 0.5)
    return thresholds


def in_background(items: Iterable, depth: int = PREFETCH) -> Iterator:
    """``items`` produced by a worker thread, up to ``depth`` ahead of the consumer, in order.

    An exception in the worker (``KeyboardInterrupt`` included) is raised in the consumer
    after the items produced before it; a consumer that stops early stops the worker.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, which re-raises it)
            put((done, error))
        finally:
            if hasattr(iterator, "close"):
                iterator.close()  # a generator's own clean-up (a nested stage, a video capture) runs now

    worker = threading.Thread(target=work, name="auformer-detect", daemon=True)
    worker.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()


class Detector:
    """AU detection on photos and videos with an AUFormer checkpoint.

    ``threshold`` is one number for every AU or a dict ``{"AU12": 0.4, "default": 0.5}``
    (AUs left out use ``default``, itself 0.5 unless given). ``face_detector`` is a name of
    `auformer.faces.get_detector` (``"none"`` for inputs that are already aligned face crops).
    In videos, faces are detected every ``detect_every``-th analysed frame and tracked in
    between (1: detect every frame). ``amp="bf16"`` runs the network under bfloat16 autocast
    on ``device`` (``"cpu"``, ``"cuda"``, ...).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        face_detector: str = DEFAULT_DETECTOR,
        device: str = "cpu",
        batch_size: int = 32,
        threshold: float | Mapping[str | int, float] = 0.5,
        backbone_weights: str | None = None,
        detect_every: int = 5,
        amp: str = "none",
    ) -> None:
        if batch_size < 1:
            raise AUFormerError(f"batch_size must be a positive integer, got {batch_size}")
        if detect_every < 1:
            raise AUFormerError(f"detect_every must be a positive integer, got {detect_every}")
        if amp not in AMP_DTYPES:
            raise AUFormerError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        checkpoint = resolve_checkpoint(checkpoint)  # a Hub repo id is fetched once, here
        self.checkpoint = checkpoint
        meta = read_checkpoint_meta(checkpoint)
        self.model = load_checkpoint(checkpoint, backbone_weights=backbone_weights, map_location=device).eval()
        if not self.model.aus:
            raise AUFormerError(f"{checkpoint}: checkpoint has no AU list; cannot name the output columns")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.detect_every = detect_every
        self.amp_dtype = AMP_DTYPES[amp]
        self.au_columns = au_columns(self.model.aus)
        self.occurrence = self.model.head is not None  # AU01 probabilities and AU01_c occurrences
        self.intensity = self.model.intensity is not None  # AU01_r intensities, 0-5
        self.thresholds = self._resolve_thresholds(threshold)  # (N,)
        self.face_detector = get_detector(face_detector)
        data_config = self.model.data_config
        # The training run's own test resize (recorded by the trainer), else the default 256/224 ratio.
        resize_size = meta.get("extra", {}).get("resize_size")
        self.transform = build_transform(
            False, data_config["input_size"][-1], data_config["mean"], data_config["std"], resize_size
        )
        weights = backbone_weights or self.model.config.get("backbone_weights")
        self.synthetic = meta.get("extra", {}).get("dataset") == "synthetic" or weights == "synthetic"

    def _resolve_thresholds(self, threshold: float | Mapping[str | int, float]) -> np.ndarray:
        if not isinstance(threshold, Mapping):
            return np.full(len(self.au_columns), float(threshold))
        by_column = {("default" if key == "default" else au_column(key)): float(value) for key, value in threshold.items()}
        unknown = set(by_column) - {"default", *self.au_columns}
        if unknown:
            raise AUFormerError(
                f"thresholds for {sorted(unknown)}, which the model does not predict ({', '.join(self.au_columns)})"
            )
        default = by_column.get("default", 0.5)
        return np.array([by_column.get(column, default) for column in self.au_columns])

    def _inputs(self, crops: list[np.ndarray]) -> torch.Tensor:
        """(F, 3, S, S) float model inputs of aligned uint8 crops."""
        return torch.stack([self.transform(crop) for crop in crops]) if crops else torch.zeros(0)

    @torch.inference_mode()
    def _predict(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """Outputs of model inputs ``(F, 3, S, S)``, ``batch_size`` at a time: ``"probs"`` (F, N) for
        occurrence checkpoints, ``"intensity"`` (F, N) in [0, 5] for intensity checkpoints."""
        names = ["probs"] * self.occurrence + ["intensity"] * self.intensity
        parts = {name: [np.zeros((0, len(self.au_columns)), dtype=np.float32)] for name in names}
        if self.device.type == "cuda" and len(images):
            images = images.pin_memory()  # page-locked: the copies below overlap with the GPU's work
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype is not None else contextlib.nullcontext()
        )
        for begin in range(0, len(images), self.batch_size):
            batch = images[begin : begin + self.batch_size].to(self.device, non_blocking=True)  # (B, 3, S, S)
            with autocast:
                output = self.model(batch)
            if self.occurrence:
                parts["probs"].append(torch.sigmoid(output.logits.float()).cpu().numpy())  # (B, N)
            if self.intensity:
                parts["intensity"].append(output.intensity.float().cpu().numpy())  # (B, N)
        return {name: np.concatenate(values) for name, values in parts.items()}

    def predict(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for aligned uint8 (H, W, 3) RGB face crops (see `_predict`)."""
        return self._predict(self._inputs(crops))

    def predict_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """AU probabilities ``(F, N)`` of aligned face crops (occurrence checkpoints; see `predict`)."""
        if not self.occurrence:
            raise AUFormerError("this checkpoint predicts intensity only (model.task='intensity'): use predict()")
        return self.predict(crops)["probs"]

    def _find_faces(
        self, frames: Iterable[Frame], carried: Sequence[Face] = (), next_face_id: int = 0
    ) -> Iterator[tuple[Frame, list[AlignedFace], torch.Tensor]]:
        """Each frame with its aligned faces and their model inputs; one tracker per video (`iter_results`)."""
        tracker = FaceTracker(self.face_detector, self.detect_every)
        previous: Frame | None = None
        for frame in frames:
            if previous is None:
                tracker.reset(carried, next_face_id)
            elif frame.input != previous.input or frame.index <= previous.index:
                tracker.reset()  # a new photo or video (or a jump back): nothing to track from, ids from 0
            aligned = align_faces(frame.image, tracker, size=TEMPLATE_SIZE)
            yield frame, aligned, self._inputs([face.crop for face in aligned])
            previous = frame

    def iter_results(
        self, frames: Iterable[Frame], carried: Sequence[Face] = (), next_face_id: int = 0
    ) -> Iterator[tuple[pd.DataFrame, list[AlignedFace]]]:
        """Analyse ``frames``; yield ``(table, aligned faces)`` about every ``batch_size`` rows, in frame order.

        The table holds one row per face and one ``success=0`` row per frame without a
        face. ``face`` is the face's identity (`auformer.faces.track`): in a video a face
        keeps its number while it stays in view and a new face gets a number not used
        before in that video; in a photo the numbers are the detector's ranks, best
        first. ``carried`` and ``next_face_id`` continue the first video's numbering (a
        resumed run, `written_faces`). The faces list is in the order of the
        table's ``success=1`` rows. Yielding batch by batch lets callers write long videos
        as they go. Frames are decoded and their faces found in background threads while
        the network runs on the previous batch. A stream that fails mid-way (:class:`AUFormerError`)
        first gets the frames before the failure analysed and yielded, then the error is raised.
        """
        rows: list[dict] = []
        faces: list[AlignedFace] = []
        inputs: list[torch.Tensor] = []
        stopped = None
        try:
            for frame, aligned, images in in_background(self._find_faces(in_background(frames), carried, next_face_id)):
                base = {"input": frame.input, "frame": frame.index, "time_s": round(frame.time_s, 4)}
                if not aligned:
                    rows.append({**base, "success": 0})
                for face in aligned:
                    x, y, w, h = face.face.box
                    rows.append(
                        {
                            **base,
                            "face": face.face.face_id,
                            "x": x,
                            "y": y,
                            "w": w,
                            "h": h,
                            "face_score": face.face.score,
                            "success": 1,
                        }
                    )
                faces.extend(aligned)
                inputs.append(images)
                if len(rows) >= self.batch_size:  # rows, not faces: a long stretch without faces is written too
                    yield self._table(rows, faces, inputs), faces
                    rows, faces, inputs = [], [], []
        except AUFormerError as error:  # e.g. a video that stops mid-stream: keep what was decoded
            stopped = error
        if rows:
            yield self._table(rows, faces, inputs), faces
        if stopped is not None:
            raise stopped

    def _table(self, rows: list[dict], faces: list[AlignedFace], inputs: list[torch.Tensor]) -> pd.DataFrame:
        """Rows plus the model's probabilities (``AU01``), occurrences (``AU01_c``) and intensities (``AU01_r``)
        for the face rows, as the checkpoint has them."""
        table = pd.DataFrame(rows).reindex(columns=FACE_COLUMNS)
        table = table.astype({"frame": "int64", "face": "Int64", "success": "int64"})
        found = table["success"].to_numpy() == 1
        images = torch.cat([batch for batch in inputs if len(batch)]) if faces else torch.zeros(0)  # (F, 3, S, S)
        parts = [table]
        for name, values in self._predict(images).items():
            full = np.full((len(table), len(self.au_columns)), np.nan)  # (rows, N), NaN on rows without a face
            full[found] = values
            if name == "probs":
                occurrences = pd.DataFrame(full >= self.thresholds, columns=[c + "_c" for c in self.au_columns], dtype="Int64")
                occurrences[np.isnan(full)] = pd.NA
                parts += [pd.DataFrame(full, columns=self.au_columns), occurrences]
            else:
                parts.append(pd.DataFrame(full, columns=[c + INTENSITY_SUFFIX for c in self.au_columns]))
        return pd.concat(parts, axis=1)

    def plot_faces(
        self,
        table: pd.DataFrame,
        faces: list[AlignedFace],
        path_of: Callable[[pd.Series], Path],
        title_of: Callable[[pd.Series], str],
    ) -> list[Path]:
        """`viz.plot_face_aus` for every face row of a result ``table`` (``faces`` in the order of its
        ``success=1`` rows): probabilities and/or intensities, as the checkpoint has them."""
        from auformer.viz import plot_face_aus

        thresholds = dict(zip(self.au_columns, self.thresholds))
        paths = []
        for (_, row), face in zip(table[table["success"] == 1].iterrows(), faces):
            probabilities = {column: row[column] for column in self.au_columns} if self.occurrence else {}
            intensity = {column: row[column + INTENSITY_SUFFIX] for column in self.au_columns} if self.intensity else None
            paths.append(plot_face_aus(face.crop, probabilities, thresholds, path_of(row), title_of(row), intensity))
        return paths

    def detect(self, image: str | os.PathLike | np.ndarray) -> pd.DataFrame:
        """AUs of every face in one image (a path, or a uint8 (H, W, 3) RGB array)."""
        if isinstance(image, np.ndarray):
            frame = Frame("<array>", 0, 0.0, image)
        else:
            frame = Frame(str(image), 0, 0.0, read_image(image))
        return pd.concat([table for table, _ in self.iter_results([frame])], ignore_index=True)

    def detect_video(
        self, path: str | os.PathLike, every: int = 1, start: float | None = None, end: float | None = None
    ) -> pd.DataFrame:
        """AUs of every face in every ``every``-th frame between ``start`` and ``end`` seconds."""
        tables = [table for table, _ in self.iter_results(video_frames(path, every, start, end))]
        if not tables:
            raise AUFormerError(f"{path}: no frames decoded between start={start} and end={end}")
        return pd.concat(tables, ignore_index=True)


def to_openface(table: pd.DataFrame) -> pd.DataFrame:
    """OpenFace-style column names: ``face_id``, ``timestamp``, ``confidence``, frames from 1.

    Probabilities keep their ``AU01`` names; ``AU01_c`` (0/1 occurrence) and ``AU01_r``
    (0-5 intensity, from checkpoints with intensity heads) already have OpenFace's names.
    """
    table = table.rename(columns=OPENFACE_NAMES)
    table["frame"] = table["frame"] + 1

    # OpenFace's order: intensities (_r) before occurrences (_c); the probabilities, which it lacks, last.
    # A stable sort keeps the AU order within each group.
    def group(column: str) -> int:
        if not column.startswith("AU"):
            return 0
        return 1 if column.endswith(INTENSITY_SUFFIX) else 2 if column.endswith("_c") else 3

    return table[sorted(table.columns, key=group)]


def expand_inputs(
    inputs: Iterable[str | os.PathLike], exclude: str | os.PathLike | None = None
) -> tuple[list[Path], list[Path], int]:
    """Split inputs into (images, videos, ignored); folders are searched recursively.

    A missing input raises ``FileNotFoundError`` before any work starts; files in
    folders with other extensions are counted as ignored; an explicitly named file
    with an unknown extension is treated as an image (reading it reports it if it is not).
    A file named twice (``photos/ photos/a.jpg``) is analysed once; the folder ``exclude``
    (the output folder, when it lies inside an input folder) is not searched.
    """
    images: list[Path] = []
    videos: list[Path] = []
    ignored = 0
    skip = Path(exclude).resolve() if exclude is not None else None
    seen: set[Path] = set()
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and not (skip and p.parent.resolve().is_relative_to(skip)))
        elif item.is_file():
            files = [item]
        else:
            raise FileNotFoundError(f"input not found: {item}")
        for file in files:
            if file.resolve() in seen:
                continue
            seen.add(file.resolve())
            suffix = file.suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                videos.append(file)
            elif suffix in IMAGE_EXTENSIONS or not item.is_dir():
                images.append(file)
            else:
                ignored += 1
    return images, videos, ignored


class _CsvWriter:
    """Appends result tables to one CSV (header once): an interrupted run keeps what it wrote.

    ``resume=True`` keeps an existing CSV: :func:`completed_frames` cuts its unfinished
    tail, and ``done`` maps each input to the last frame written in full, which the
    run then skips.
    """

    def __init__(self, path: Path, openface: bool, resume: bool = False) -> None:
        self.path = path
        self.openface = openface
        self.rows = 0
        self.done: dict[str, int] = completed_frames(path, openface) if resume and path.is_file() else {}
        if not self.done:
            path.unlink(missing_ok=True)

    def write(self, table: pd.DataFrame) -> None:
        table = to_openface(table) if self.openface else table
        table.to_csv(self.path, mode="a", header=not self.path.is_file(), index=False, float_format="%.6g")
        self.rows += len(table)


def completed_frames(path: Path, openface: bool = False) -> dict[str, int]:
    """Input -> last frame number written in full in a detection CSV; truncates what is not.

    A killed run can leave half a line, and the rows of its last frame may be
    incomplete (one row per face); both are cut, so a resumed run redoes that frame
    and the CSV holds every frame exactly once. Streams the file: memory is one entry
    per input, not per row.
    """
    done: dict[str, int] = {}
    keep, last_key = 0, None  # bytes to keep; (input, frame) of the rows since `keep`
    with open(path, "rb") as file:
        header = next(csv.reader([file.readline().decode()]), [])
        if "input" not in header or "frame" not in header:
            return {}
        column_input, column_frame = header.index("input"), header.index("frame")
        keep = file.tell()
        for number, line in enumerate(iter(file.readline, b""), start=2):
            if not line.endswith(b"\n"):
                break  # half a line: the write was killed
            try:
                cells = next(csv.reader([line.decode()]))
                key = (cells[column_input], int(cells[column_frame]) - (1 if openface else 0))
            except (UnicodeDecodeError, ValueError, IndexError, StopIteration):
                raise AUFormerError(f"{path}: line {number} is not a row this command wrote; pass --overwrite") from None
            if key != last_key:
                if last_key is not None:
                    done[last_key[0]] = last_key[1]
                keep, last_key = file.tell() - len(line), key
    with open(path, "r+b") as file:
        file.truncate(keep)
    return done


def written_faces(path: Path, openface: bool = False) -> tuple[list[Face], int]:
    """The faces of the last frame in a video's detection CSV (box and ``face_id``) and the next unused id.

    A resumed run continues the video's face numbering from them (`Detector.iter_results`):
    a face overlapping one of these boxes keeps its number, other faces get new ones.
    """
    column = OPENFACE_NAMES["face"] if openface else "face"
    try:
        table = pd.read_csv(path, usecols=[column, "frame", "x", "y", "w", "h"])
        found = table[(table["frame"] == table["frame"].max()) & table[column].notna()]
        faces = [
            Face(box=(float(row.x), float(row.y), float(row.w), float(row.h)), score=0.0, landmarks=None, face_id=int(face_id))
            for face_id, row in zip(found[column], found.itertuples())
        ]
        next_id = int(table[column].max()) + 1 if table[column].notna().any() else 0
    except (ValueError, TypeError) as error:  # a missing column, a cell that is not a number
        raise AUFormerError(f"{path}: cannot continue its face numbering ({error})") from None
    return faces, next_id


@dataclass
class _Counts:
    frames: int = 0
    faces: int = 0
    frames_without_face: int = 0
    unreadable: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per skipped input (--skip-bad)

    def skip(self, error: Exception, progress: tqdm, skip_bad: bool) -> None:
        """Count and list a bad input (``--skip-bad``), or stop the run with its one-line error."""
        if not skip_bad:
            raise error
        progress.write(f"skipped: {error}")
        self.unreadable += 1
        self.skipped.append(str(error))


def _run(
    detector: Detector,
    frames: Iterable[Frame],
    writer: _CsvWriter,
    progress: tqdm,
    counts: _Counts,
    plot_prefix: Mapping[str, Path] | None,
    carried: tuple[list[Face], int] = ([], 0),
) -> None:
    """Feed ``frames`` through ``detector`` into ``writer``, updating the progress bar and counts.

    ``plot_prefix``: input -> path prefix of its face plots (``PREFIX_face0.png``), None for no plots.
    ``carried``: a resumed video's `written_faces`.
    """
    started, faces_before = time.perf_counter(), counts.faces
    note = " (synthetic checkpoint: not meaningful)" if detector.synthetic else ""  # plot titles
    for table, faces in detector.iter_results(frames, *carried):
        writer.write(table)
        new_frames = table.drop_duplicates(["input", "frame"])
        counts.frames += len(new_frames)
        counts.faces += len(faces)
        counts.frames_without_face += int((table["success"] == 0).sum())
        progress.update(len(new_frames))
        progress.set_postfix(
            faces=counts.faces, faces_per_s=f"{(counts.faces - faces_before) / (time.perf_counter() - started):.1f}"
        )
        if plot_prefix is not None:
            detector.plot_faces(
                table,
                faces,
                lambda row: Path(f"{plot_prefix[row['input']]}_face{row['face']}.png"),
                lambda row: f"{row['input']}, face {row['face']}{note}",
            )


def _image_frames(paths: list[Path], progress: tqdm, counts: _Counts, skip_bad: bool) -> Iterator[Frame]:
    """Photos as frames; an unreadable file stops the run, or with ``skip_bad`` is reported, counted and skipped."""
    for path in paths:
        try:
            yield Frame(str(path), 0, 0.0, read_image(path))
        except (AUFormerError, FileNotFoundError) as error:
            counts.skip(error, progress, skip_bad)
            progress.update(1)


@dataclass
class _Outputs:
    """Where one ``detect`` run writes: ``images.csv``, a CSV per video, a plot name per photo, all distinct.

    Two videos ``a/x.mp4`` and ``b/x.mp4`` get ``x.csv`` and ``x_2.csv``, two photos ``a/x.png``
    and ``b/x.png`` the plots ``x_face0.png`` and ``x_2_face0.png`` (`auformer.files.UniqueNames`).
    """

    out: Path
    video_csv: dict[Path, Path]  # video -> its CSV
    plot_prefix: dict[str, Path] | None  # photo (as the table names it) -> OUT/plots/STEM, None without --plot

    @classmethod
    def plan(cls, out: Path, images: list[Path], videos: list[Path], plot: bool) -> _Outputs:
        csv_names, plot_names = UniqueNames([IMAGES_CSV, SUMMARY_NAME]), UniqueNames()
        video_csv = {video: out / csv_names.claim(f"{video.stem}.csv") for video in videos}
        plot_prefix = {str(path): out / "plots" / plot_names.claim(path.stem) for path in images} if plot else None
        return cls(out, video_csv, plot_prefix)

    @property
    def csv_files(self) -> list[Path]:
        return [self.out / IMAGES_CSV, *self.video_csv.values()]

    def previous(self) -> list[Path]:
        """Files of an earlier run in OUT: its ``detect.json``, the CSVs this run writes, its plots."""
        found = [path for path in (self.out / SUMMARY_NAME, *self.csv_files) if path.exists()]
        return found + sorted((self.out / "plots").glob("*.png"))

    def remove_previous(self) -> None:
        """``--overwrite``: delete the earlier run's CSVs (those its ``detect.json`` lists and those this run writes)
        and plots; the listed names are kept inside OUT (`resolve_inside`), whatever the file says."""
        try:
            listed = _read_summary(self.out).get("csv", []) if (self.out / SUMMARY_NAME).is_file() else []
        except AUFormerError:  # an unreadable detect.json is replaced like the rest
            listed = []
        listed = listed if isinstance(listed, list) else []
        doomed = {resolve_inside(self.out, str(name), str(self.out / SUMMARY_NAME)) for name in listed}
        for path in {path for path in doomed if path.suffix == ".csv"} | {path.resolve() for path in self.previous()}:
            if path.is_file():
                path.unlink()


def run_identity(detector: Detector, openface: bool) -> dict:
    """What a ``--resume`` must share with the run it continues: the checkpoint's files (sha256), format and columns."""
    weights, config = checkpoint_paths(detector.checkpoint)
    empty = detector._table([], [], [])  # the columns this checkpoint writes
    return {
        "checkpoint": str(detector.checkpoint),
        "checkpoint_sha256": {path.name: file_sha256(path) for path in (weights, config)},
        "format": "openface" if openface else "auformer",
        "columns": list((to_openface(empty) if openface else empty).columns),
    }


def _read_summary(out: Path) -> dict:
    path = out / SUMMARY_NAME
    try:
        summary = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AUFormerError(
            f"{path}: not a detect.json this command wrote ({error}); pass --overwrite or another --out"
        ) from None
    if not isinstance(summary, dict):
        raise AUFormerError(f"{path}: not a detect.json this command wrote; pass --overwrite or another --out")
    return summary


def check_resume(outputs: _Outputs, identity: dict) -> None:
    """Refuse (one line) a ``--resume`` whose checkpoint, format or columns differ from the run that wrote OUT,
    or whose CSVs have another header: appended rows would not match the columns above them."""
    out, advice = outputs.out, "pass --overwrite to replace its results, or choose another --out"
    if not (out / SUMMARY_NAME).is_file():
        if any(path.exists() for path in outputs.csv_files):
            raise AUFormerError(
                f"{out}: --resume needs {SUMMARY_NAME}, which says what wrote the CSVs there, and it is missing; {advice}"
            )
        return
    previous = _read_summary(out)
    if "checkpoint_sha256" not in previous:
        raise AUFormerError(f"{out / SUMMARY_NAME} does not record the checkpoint of its run (an older auformer?); {advice}")
    if previous["checkpoint_sha256"] != identity["checkpoint_sha256"]:
        raise AUFormerError(
            f"{out}: --resume with checkpoint {identity['checkpoint']}, but the run there used another one "
            f"({previous.get('checkpoint')}, other sha256); {advice}"
        )
    if previous.get("format") != identity["format"]:
        raise AUFormerError(
            f"{out}: --resume with --format {identity['format']}, but the run there wrote --format {previous.get('format')}; "
            f"pass --format {previous.get('format')}, or {advice}"
        )
    expected = ",".join(identity["columns"])
    for path in outputs.csv_files:
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as file:
                header = file.readline().decode("utf-8", errors="replace").strip()
            if header != expected:
                raise AUFormerError(f"{path}: its header is not the one this run writes ({expected[:60]}...); {advice}")


def run_detect(args: argparse.Namespace) -> None:
    """``auformer detect``: photos into ``OUT/images.csv``, each video into ``OUT/<video>.csv``.

    OUT may lie inside an input folder (it is then not searched), but may not be or hold an input.
    A folder that already holds results is refused unless ``--resume`` (checked: same checkpoint,
    format and columns) or ``--overwrite`` is given; ``detect.json`` is written first, with what
    a resumed run is checked against, and again at the end with the counts.
    """
    from auformer.viz import plot_au_timeseries

    out = Path(args.out)
    check_apart(out, args.inputs, inside_ok=True)
    images, videos, ignored = expand_inputs(args.inputs, exclude=out)
    if not images and not videos:
        raise AUFormerError(f"no images or videos found in {', '.join(map(str, args.inputs))}")
    outputs = _Outputs.plan(out, images, videos, args.plot)
    previous = outputs.previous()
    if previous and not (args.resume or args.overwrite):
        raise AUFormerError(
            f"{out} already holds results ({', '.join(path.name for path in previous[:3])}"
            f"{', ...' if len(previous) > 3 else ''}): pass --resume to continue that run, --overwrite to replace it, "
            "or choose another --out"
        )
    detector = Detector(
        args.checkpoint,
        face_detector=args.face_detector,
        device=args.device,
        batch_size=args.batch_size,
        threshold=parse_thresholds(args.threshold or ["0.5"]),
        backbone_weights=args.backbone_weights,
        detect_every=args.detect_every,
        amp=args.amp,
    )
    if detector.synthetic:
        print(SYNTHETIC_WARNING)
    openface = args.format == "openface"
    identity = run_identity(detector, openface)
    if args.resume:
        check_resume(outputs, identity)
    elif args.overwrite:
        outputs.remove_previous()
    plot_dir = out / "plots" if args.plot else None
    for folder in (out, plot_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    csv_names = [path.name for path in outputs.csv_files[0 if images else 1 :]]
    atomic_write_text(out / SUMMARY_NAME, json.dumps({**identity, "finished": False, "csv": csv_names}, indent=2) + "\n")
    counts = _Counts()
    written: list[Path] = []
    if images:
        writer = _CsvWriter(out / IMAGES_CSV, openface, args.resume)
        todo = [path for path in images if str(path) not in writer.done]
        with tqdm(total=len(images), initial=len(images) - len(todo), desc="images", unit="image") as progress:
            frames = _image_frames(todo, progress, counts, args.skip_bad)
            _run(detector, frames, writer, progress, counts, outputs.plot_prefix)
        written.append(writer.path)
    for video, csv_path in outputs.video_csv.items():
        writer = _CsvWriter(csv_path, openface, args.resume)
        total = count_video_frames(video, args.every, args.start, args.end)
        after = writer.done.get(str(video))
        carried = ([], 0)
        if after is not None:
            print(f"resuming {writer.path} after frame {after}")
            carried = written_faces(writer.path, openface)  # the video's face numbers continue
        with tqdm(total=total, desc=video.name, unit="frame") as progress:
            try:
                frames = video_frames(video, args.every, args.start, args.end, after)
                _run(detector, frames, writer, progress, counts, None, carried)
            except (AUFormerError, FileNotFoundError) as error:
                counts.skip(error, progress, args.skip_bad)
                if not writer.path.is_file():
                    continue
        written.append(writer.path)
        if plot_dir is not None and writer.rows:
            plot_au_timeseries(
                pd.read_csv(writer.path),
                plot_dir / f"{writer.path.stem}_aus.png",
                dict(zip(detector.au_columns, detector.thresholds)),
            )
    print(
        f"{counts.frames} frames ({len(images)} images, {len(videos)} videos): {counts.faces} faces, "
        f"{counts.frames_without_face} frames without a face, {counts.unreadable} unreadable inputs skipped"
        + (f", {ignored} files with other extensions ignored" if ignored else "")
    )
    for line in counts.skipped:
        print(f"skipped: {line}")
    summary = {
        **identity,
        "finished": True,
        "frames": counts.frames,
        "faces": counts.faces,
        "frames_without_face": counts.frames_without_face,
        "skipped": counts.skipped,
        "ignored_files": ignored,
        "csv": [path.name for path in written],
        "face_detector": detector.face_detector.name,  # what `auto` resolved to
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    for path in written:
        print(f"wrote {path}")
    print(f"wrote {out / SUMMARY_NAME} (checkpoint, counts and skipped inputs)")
    if plot_dir is not None:
        print(f"plots in {plot_dir}")
    if detector.synthetic:
        print(SYNTHETIC_WARNING)
