"""The Detector: an AUFormer checkpoint as AU probabilities for aligned face crops, and the result table.

A thin wrapper of the model: it loads a checkpoint, turns aligned uint8 crops into the
training-time test inputs and runs the network in batches (``AU01`` probabilities and ``AU01_c``
occurrences from occurrence heads, ``AU01_r`` intensities, 0-5, from intensity heads). Its
`Detector.iter_results` joins the stages: a frame source (`auformer.detect.sources`), the face
pipeline (`auformer.detect.pipeline`, photos spread over `FACE_WORKERS` threads) and the network,
run at the same time in their own threads (OpenCV, YuNet, dlib and torch release the GIL). Every frame gives at least one row: frames without a
face get one row with ``success=0`` and empty face and AU columns, never a silent gap.

Table columns (``auformer`` format)::

    input, frame, time_s, face, x, y, w, h, face_score, success, AU01, ..., AU01_c, ..., AU01_r, ...
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from auformer.aus import au_column, au_columns
from auformer.data.transforms import build_transform
from auformer.detect.pipeline import FacePipeline
from auformer.detect.runtime import RUNTIMES, OnnxRuntimeModel
from auformer.detect.sources import ARRAY_INPUT, Frame, FrameSource, as_frames, in_background, read_image, video_frames
from auformer.errors import AUFormerError
from auformer.faces import DEFAULT_DETECTOR, TEMPLATE_SIZE, AlignedFace, Face, get_detector
from auformer.faces.pose import POSE_COLUMNS, head_pose
from auformer.model.checkpoint import checkpoint_paths, checkpoint_thresholds, open_checkpoint

FACE_COLUMNS = ["input", "frame", "time_s", "face", "x", "y", "w", "h", "face_score", "success"]
LANDMARK_COLUMNS = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]  # OpenFace's 2D landmark names
INTENSITY_SUFFIX = "_r"  # AU12_r: intensity 0-5, as OpenFace names it
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16}  # --amp: autocast dtype of the model's forward
FACE_WORKERS = min(4, os.cpu_count() or 1)  # threads finding faces in photos at once (`FacePipeline`: 1 unless thread_safe)
SYNTHETIC_WARNING = (
    "warning: this checkpoint was trained on synthetic faces: its AU predictions on real "
    "photos are not meaningful (it only shows that the pipeline runs)"
)


def parse_thresholds(values: Iterable[str] | None) -> float | dict[str, float] | None:
    """CLI ``--threshold`` values: ``0.6`` (all AUs), ``AU12=0.4`` (one AU), or both (``default`` + overrides);
    None when none are given (`Detector` then uses the checkpoint's thresholds, else 0.5)."""
    if not values:
        return None
    thresholds: dict[str, float] = {}
    for value in values:
        key, _, number = value.rpartition("=")
        try:
            threshold = float(number)
        except ValueError:
            raise AUFormerError(f"bad --threshold {value!r}: expected a number like 0.5 or AU12=0.4") from None
        thresholds[au_column(key) if key else "default"] = threshold
    if set(thresholds) == {"default"}:
        return thresholds["default"]
    return thresholds


def occurrence_columns(
    values: np.ndarray, thresholds: np.ndarray, columns: Sequence[str]
) -> dict[str, pd.api.extensions.ExtensionArray]:
    """``COLUMN_c`` for each of ``columns``: nullable Int64, 1 where ``values`` ``(rows, N)`` reach their
    ``thresholds`` ``(N,)``, 0 below, <NA> where a value is NaN (a row without a face).

    Built from (data, mask) arrays: setting NA through a boolean frame costs more than the model on a
    live frame (pandas' ``where`` per column).
    """
    missing = np.isnan(values)  # (rows, N)
    present = (values >= thresholds).astype(np.int64)  # (rows, N); NaN compares False, masked anyway
    return {f"{column}_c": pd.arrays.IntegerArray(present[:, j], missing[:, j]) for j, column in enumerate(columns)}


class Detector:
    """AU detection on photos and videos with an AUFormer checkpoint.

    ``threshold`` is one number for every AU or a dict ``{"AU12": 0.4, "default": 0.5}``
    (AUs left out use ``default``, else the checkpoint's own threshold). None: the per-AU
    thresholds the checkpoint's run tuned on its validation split (``train.threshold_search``),
    else 0.5. ``face_detector`` is a name of
    `auformer.faces.get_detector` (``"none"`` for inputs that are already aligned face crops).
    In videos, faces are detected every ``detect_every``-th analysed frame and tracked in
    between (1: detect every frame). ``amp="bf16"`` runs the network under bfloat16 autocast
    on ``device`` (``"cpu"``, ``"cuda"``, ...). ``runtime="onnxruntime"`` runs an ``auformer export``
    ``.onnx`` file (fp32 or int8) on ONNX Runtime's CPU provider instead of a checkpoint; its
    thresholds are the ones the file records, used when ``threshold`` is None (else 0.5).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        face_detector: str = DEFAULT_DETECTOR,
        device: str = "cpu",
        batch_size: int = 32,
        threshold: float | Mapping[str | int, float] | None = None,
        backbone_weights: str | None = None,
        detect_every: int = 5,
        amp: str = "none",
        runtime: str = "torch",
        landmarks: bool = False,
        pose: bool = False,
    ) -> None:
        """``landmarks``: add the 68 points as ``x_0..x_67``, ``y_0..y_67`` (OpenFace's names); ``pose``: add
        ``pose_Rx/Ry/Rz`` (radians, `auformer.faces.pose`). Both stay empty for box-only detectors (haar, none)."""
        if batch_size < 1:
            raise AUFormerError(f"batch_size must be a positive integer, got {batch_size}")
        if detect_every < 1:
            raise AUFormerError(f"detect_every must be a positive integer, got {detect_every}")
        if amp not in AMP_DTYPES:
            raise AUFormerError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
        if runtime not in RUNTIMES:
            raise AUFormerError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.detect_every = detect_every
        self.amp_dtype = AMP_DTYPES[amp]
        if runtime == "onnxruntime":  # an exported file: its metadata describes it (auformer.detect.runtime)
            torch_only = {f"--device {device}": self.device.type != "cpu", f"--amp {amp}": amp != "none",
                          "--backbone-weights": backbone_weights is not None}  # fmt: skip
            if any(torch_only.values()):
                raise AUFormerError(
                    f"{checkpoint}: --runtime onnxruntime runs the whole exported model on ONNX Runtime's CPU provider; "
                    f"{', '.join(flag for flag, given in torch_only.items() if given)} apply to --runtime torch only"
                )
            self.model = self.onnx = OnnxRuntimeModel(checkpoint)
            self.checkpoint = self.onnx.path
            self.files: tuple[Path, ...] = (self.onnx.path,)
            aus, outputs, recorded = self.onnx.aus, self.onnx.outputs, self.onnx.thresholds
            data_config, resize_size, self.synthetic = self.onnx.data_config, self.onnx.resize_size, self.onnx.synthetic
        else:
            opened = open_checkpoint(checkpoint, backbone_weights=backbone_weights, map_location=device)
            self.checkpoint = checkpoint = opened.path  # a Hub repo id is fetched once, here
            self.files = checkpoint_paths(checkpoint)
            self.model, meta, self.onnx = opened.model, opened.meta, None
            if not self.model.aus:
                raise AUFormerError(f"{checkpoint}: checkpoint has no AU list; cannot name the output columns")
            aus, recorded = self.model.aus, checkpoint_thresholds(meta) or 0.5  # tuned on validation, else 0.5
            outputs = ["probabilities"] * (self.model.head is not None) + ["intensity"] * (self.model.intensity is not None)
            data_config = self.model.data_config
            # The training run's own test resize (recorded by the trainer), else the default 256/224 ratio.
            resize_size = meta.get("extra", {}).get("resize_size")
            weights = backbone_weights or self.model.config.get("backbone_weights")
            self.synthetic = meta.get("extra", {}).get("dataset") == "synthetic" or weights == "synthetic"
        self.au_columns = au_columns(aus)
        self.occurrence = "probabilities" in outputs  # AU01 probabilities and AU01_c occurrences
        self.intensity = "intensity" in outputs  # AU01_r intensities, 0-5
        self.thresholds = self._resolve_thresholds(threshold, recorded)  # (N,)
        self.landmarks, self.pose = landmarks, pose
        self.face_columns = FACE_COLUMNS + LANDMARK_COLUMNS * landmarks + POSE_COLUMNS * pose
        self.face_detector = get_detector(face_detector)
        self.pipeline = FacePipeline(self.face_detector, detect_every, FACE_WORKERS)
        self.transform = build_transform(
            False, data_config["input_size"][-1], data_config["mean"], data_config["std"], resize_size
        )
        self.synthetic_warned = not self.synthetic  # `auformer detect` prints the warning its own way and sets this

    def _resolve_thresholds(self, threshold: float | Mapping[str | int, float] | None, stored: float | list[float]) -> np.ndarray:
        """(N,) thresholds: the user's (a number, or per AU), falling back to ``stored`` (the checkpoint's)."""
        stored = np.broadcast_to(np.asarray(stored, dtype=np.float64), (len(self.au_columns),))
        if threshold is None:
            return stored.copy()
        if not isinstance(threshold, Mapping):
            return np.full(len(self.au_columns), float(threshold))
        by_column = {("default" if key == "default" else au_column(key)): float(value) for key, value in threshold.items()}
        unknown = set(by_column) - {"default", *self.au_columns}
        if unknown:
            raise AUFormerError(
                f"thresholds for {sorted(unknown)}, which the model does not predict ({', '.join(self.au_columns)})"
            )
        fallback = np.full(len(self.au_columns), by_column["default"]) if "default" in by_column else stored
        return np.array([by_column.get(column, fallback[k]) for k, column in enumerate(self.au_columns)])

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
            if self.onnx is not None:
                for name, values in self.onnx(images[begin : begin + self.batch_size]).items():
                    parts[name].append(values)  # (B, N)
                continue
            batch = images[begin : begin + self.batch_size].to(self.device, non_blocking=True)  # (B, 3, S, S)
            with autocast:
                output = self.model(batch)
            if self.occurrence:
                parts["probs"].append(torch.sigmoid(output.logits.float()).cpu().numpy())  # (B, N)
            if self.intensity:
                parts["intensity"].append(output.intensity.float().cpu().numpy())  # (B, N)
        return {name: np.concatenate(values) for name, values in parts.items()}

    def warm_up(self, frame_size: tuple[int, int] = (480, 640)) -> None:
        """Run the network and the face detector once on blank input, so that the first frame of a stream
        (``auformer live``, serve's Live tab) is not the one that pays for their loading."""
        self.predict([np.zeros((TEMPLATE_SIZE, TEMPLATE_SIZE, 3), dtype=np.uint8)])
        self.face_detector.detect(np.zeros((*frame_size, 3), dtype=np.uint8))

    def predict(self, crops: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for aligned uint8 (H, W, 3) RGB face crops (see `_predict`)."""
        return self._predict(self._inputs(crops))

    def predict_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        """AU probabilities ``(F, N)`` of aligned face crops (occurrence checkpoints; see `predict`)."""
        if not self.occurrence:
            raise AUFormerError("this checkpoint predicts intensity only (model.task='intensity'): use predict()")
        return self.predict(crops)["probs"]

    def _find_faces(
        self, frames: FrameSource, carried: Sequence[Face] = (), next_face_id: int = 0
    ) -> Iterator[tuple[Frame, list[AlignedFace], torch.Tensor]]:
        """Each frame with its aligned faces (`FacePipeline`) and their model inputs."""
        for frame, aligned in self.pipeline.faces(frames, carried, next_face_id):
            yield frame, aligned, self._inputs([face.crop for face in aligned])

    def iter_results(
        self, frames: Iterable[Frame | np.ndarray], carried: Sequence[Face] = (), next_face_id: int = 0
    ) -> Iterator[tuple[pd.DataFrame, list[AlignedFace]]]:
        """Analyse ``frames``; yield ``(table, aligned faces)`` about every ``batch_size`` rows, in frame order.

        A frame is a `auformer.detect.sources.Frame` (``input`` name, frame ``index``, ``time_s``
        and a uint8 (H, W, 3) RGB ``image``), or such an image array alone (`as_frames`:
        the frames of one ``"<array>"`` input, numbered from 0, 0.1 s apart).

        The table holds one row per face and one ``success=0`` row per frame without a
        face. ``face`` is the face's identity (`auformer.faces.track`): in a video a face
        keeps its number while it stays in view and a new face gets a number not used
        before in that video; in a photo the numbers are the detector's ranks, best
        first. ``carried`` and ``next_face_id`` continue the first video's numbering (a
        resumed run, `auformer.detect.writers.written_faces`). The faces list is in the order of the
        table's ``success=1`` rows. Yielding batch by batch lets callers write long videos
        as they go. Frames are decoded and their faces found in background threads while
        the network runs on the previous batch (`auformer.detect.sources.in_background`). A stream that fails mid-way (:class:`AUFormerError`)
        first gets the frames before the failure analysed and yielded, then the error is raised.
        """
        if not self.synthetic_warned:  # Python callers get the CLI's warning too, once per Detector
            warnings.warn(SYNTHETIC_WARNING.removeprefix("warning: "), UserWarning, stacklevel=2)
            self.synthetic_warned = True
        rows: list[dict] = []
        faces: list[AlignedFace] = []
        inputs: list[torch.Tensor] = []
        stopped = None
        try:
            found = self._find_faces(in_background(as_frames(frames)), carried, next_face_id)
            for frame, aligned, images in in_background(found):
                rows += self.frame_rows(frame, aligned)
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

    def frame_rows(self, frame: Frame, aligned: list[AlignedFace]) -> list[dict]:
        """The face columns of one frame's rows: one per face, or one ``success=0`` row without a face."""
        base = {"input": frame.input, "frame": frame.index, "time_s": round(frame.time_s, 4)}
        if not aligned:
            return [{**base, "success": 0}]
        return [
            {
                **base,
                "face": face.face.face_id,
                "x": face.face.box[0],
                "y": face.face.box[1],
                "w": face.face.box[2],
                "h": face.face.box[3],
                "face_score": face.face.score,
                "success": 1,
                **self._shape_values(face.face, frame.image.shape[:2]),
            }
            for face in aligned
        ]

    def frame_table(self, frame: Frame, aligned: list[AlignedFace]) -> pd.DataFrame:
        """The result table of one frame and its aligned faces, at once (``auformer live``: no batching)."""
        return self._table(self.frame_rows(frame, aligned), aligned, [self._inputs([face.crop for face in aligned])])

    def _shape_values(self, face: Face, image_size: tuple[int, int]) -> dict[str, float]:
        """The face's landmark and pose columns, as asked for (none without a 68-point shape)."""
        if face.shape is None:
            return {}
        values = {}
        if self.landmarks:
            values.update(zip(LANDMARK_COLUMNS, np.concatenate([face.shape[:, 0], face.shape[:, 1]]).tolist()))
        if self.pose:
            values.update(zip(POSE_COLUMNS, head_pose(face.shape, image_size)))
        return values

    def empty_table(self) -> pd.DataFrame:
        """A result table with no rows: the columns this checkpoint writes."""
        return self._table([], [], [])

    def _table(self, rows: list[dict], faces: list[AlignedFace], inputs: list[torch.Tensor]) -> pd.DataFrame:
        """Rows plus the model's probabilities (``AU01``), occurrences (``AU01_c``) and intensities (``AU01_r``)
        for the face rows, as the checkpoint has them."""
        table = pd.DataFrame(rows).reindex(columns=self.face_columns)
        table = table.astype({"frame": "int64", "face": "Int64", "success": "int64"})
        found = table["success"].to_numpy() == 1
        images = torch.cat([batch for batch in inputs if len(batch)]) if faces else torch.zeros(0)  # (F, 3, S, S)
        parts = [table]
        for name, values in self._predict(images).items():
            full = np.full((len(table), len(self.au_columns)), np.nan)  # (rows, N), NaN on rows without a face
            full[found] = values
            if name == "probs":
                parts += [
                    pd.DataFrame(full, columns=self.au_columns),
                    pd.DataFrame(occurrence_columns(full, self.thresholds, self.au_columns)),
                ]
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
            frame = Frame(ARRAY_INPUT, 0, 0.0, image)
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
