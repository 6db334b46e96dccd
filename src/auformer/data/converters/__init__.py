"""Converters from the official raw releases to the prepared-dataset format (``auformer prepare``).

Each converter (``bp4d.py``, ``disfa.py``, ``casme2.py``) only knows its raw layout: it
turns labels and frame locations into :class:`Source` units. This module does the rest
for all three: read each frame (photos through the image gate, `auformer.data.images`),
align the face (or just resize), write the 256x256 JPEG crops, ``manifest.csv``,
``folds.json`` and ``prepare_report.json``. Frames that cannot be used (image missing,
unreadable, no face found) are counted and listed in the report, never silently dropped.
Every crop gets its own name inside OUT (`auformer.files.UniqueNames`), and OUT must lie
apart from what is read (`auformer.files.check_apart`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from tqdm import tqdm

from auformer.aus import au_columns
from auformer.data.images import max_pixels, open_video, read_rgb
from auformer.data.manifest import AUTable, write_folds, write_manifest
from auformer.errors import AUFormerError, BadImageError
from auformer.files import UniqueNames, atomic_write_text, check_apart, earlier_outputs, resolve_inside

if TYPE_CHECKING:
    from auformer.faces.detectors import FaceDetector

REPORT_NAME = "prepare_report.json"
IMAGES_DIR = "images"
ALIGN_MODES = ("auto", "none")
JPEG_QUALITY = 95
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_FRAME_NUMBER = re.compile(r"(\d+)$")
# Peak memory of one worker per pixel of its largest image: the decoded RGB (3 bytes) and the copies that
# conversion, EXIF rotation and alignment make. Workers are capped so that all of them fit in half the available memory.
WORKER_BYTES_PER_PIXEL = 12


@dataclass
class Frame:
    """One labelled frame to convert."""

    out_image: str  # path of the crop, relative to the output folder (images/F001/T1/0643.jpg)
    subject: str
    labels: np.ndarray  # (N,) float32: 1, 0, -1 = unknown
    origin: str  # where it comes from, for the report (raw image path, or video#frame)
    intensity: np.ndarray | None = None  # (N,) float32 0-5, -1 = unknown; None when the release has no intensity codes


@dataclass
class Source:
    """A unit of conversion work: frames read from image files, or from one video.

    Exactly one of ``image_paths`` (one raw path per frame, ``None`` when the image is
    missing) and ``video`` + ``video_frames`` (0-based frame indices, ascending) is set.
    """

    frames: list[Frame]
    image_paths: list[Path | None] | None = None
    video: Path | None = None
    video_frames: list[int] | None = None

    def read(self) -> Iterator[np.ndarray | tuple[str, str]]:
        """Yield each frame as a uint8 (H, W, 3) RGB array, or why it cannot be used: ``(report field, entry)``,
        ``missing_image`` with the frame's origin, or ``unreadable_image`` with its origin and the reader's reason."""
        return self._read_images() if self.video is None else self._read_video()

    def _read_images(self) -> Iterator[np.ndarray | tuple[str, str]]:
        for frame, path in zip(self.frames, self.image_paths):
            try:
                image = read_rgb(path) if path is not None else None
            except FileNotFoundError:
                image = None
            except BadImageError as error:  # the image gate's one refusal
                yield "unreadable_image", f"{frame.origin}: {error.reason}"
                continue
            yield ("missing_image", frame.origin) if image is None else image

    def _read_video(self) -> Iterator[np.ndarray | tuple[str, str]]:
        try:
            capture = open_video(self.video)
        except FileNotFoundError:
            yield from (("missing_image", frame.origin) for frame in self.frames)
            return
        except BadImageError as error:
            yield from (("unreadable_image", f"{frame.origin}: {error.reason}") for frame in self.frames)
            return
        position, ok, image = 0, True, None
        for frame, wanted in zip(self.frames, self.video_frames):
            while ok and position <= wanted:  # decode sequentially: seeking is unreliable in compressed videos
                ok, image = capture.read()
                position += 1
            # a frame past the end of the video is missing
            yield cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if ok and position == wanted + 1 else ("missing_image", frame.origin)
        capture.release()


@dataclass
class PrepareReport:
    """What a conversion did: counts, unknown labels per AU, and every frame it could not use."""

    dataset: str
    raw_dir: str
    out_dir: str
    align: str
    detector: str
    size: int
    frames_labelled: int = 0
    written: int = 0
    positives: dict[str, int] = field(default_factory=dict)  # per AU, over written frames
    unknown_labels: dict[str, int] = field(default_factory=dict)  # per AU, over written frames
    intensity_known: dict[str, int] = field(default_factory=dict)  # per AU, written frames with a known intensity
    missing_image: list[str] = field(default_factory=list)
    unreadable_image: list[str] = field(default_factory=list)
    no_face: list[str] = field(default_factory=list)
    bad_rows: list[str] = field(default_factory=list)  # label rows the converter could not use, with the reason
    subjects_in_no_fold: list[str] = field(default_factory=list)
    # what one converter counts beyond these (CK+: sequences without FACS codes; Aff-Wild2: unannotated
    # frames per split), written as top-level keys of prepare_report.json
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """prepare_report.json: the fields, then the converter's notes beside them."""
        fields = asdict(self)
        return json.dumps({**fields, **fields.pop("notes")}, indent=2) + "\n"

    def summary(self) -> str:
        """A few human-readable lines."""
        lines = [
            f"{self.dataset}: {self.written} of {self.frames_labelled} labelled frames written to {self.out_dir}",
            f"  missing image {len(self.missing_image)}, unreadable {len(self.unreadable_image)}, "
            f"no face {len(self.no_face)}, bad label rows {len(self.bad_rows)}",
            "  unknown labels: " + (", ".join(f"{au} {n}" for au, n in self.unknown_labels.items() if n) or "none"),
        ]
        if self.subjects_in_no_fold:
            lines.append(f"  subjects in no fold (left out of CV): {', '.join(self.subjects_in_no_fold)}")
        return "\n".join(lines)


def search(raw_dir: Path, pattern: str) -> list[Path]:
    """Matches of the glob ``pattern`` in RAW_DIR, else one or two folders deeper (archives unpack into extra folders)."""
    for prefix in ("", "*/", "*/*/"):
        matches = sorted(raw_dir.glob(prefix + pattern))
        if matches:
            return matches
    return []


def find_root(raw_dir: Path, relatives: Iterable[str]) -> Path:
    """The folder holding the relative folders (``F001/T1``): RAW_DIR or up to two levels below it.

    The first of ``relatives`` that exists fixes the root for all of them.
    """
    relatives = list(relatives)
    for relative in relatives:
        folders = [path for path in search(raw_dir, relative) if path.is_dir()]
        if folders:
            return Path(str(folders[0])[: -len(relative)])
    shown = ", ".join(relatives[:3]) + (", ..." if len(relatives) > 3 else "")
    raise FileNotFoundError(f"{raw_dir}: none of the folders {shown} is in it or up to two levels below")


def find_dir(raw_dir: Path, relative: str) -> Path:
    """``raw_dir/relative``, or the same path up to two folders deeper."""
    return find_root(raw_dir, [relative]) / relative


def numbered_images(folder: Path) -> dict[int, Path]:
    """Frame number -> image file in one folder: the number ending the name (``0643.jpg``, ``img46.jpg``, ``reg_img46.png``)."""
    if not folder.is_dir():
        return {}
    numbered = ((_FRAME_NUMBER.search(p.stem), p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return {int(match.group(1)): p for match, p in numbered if match}


def read_frame_intensity(path: Path, unknown: int | None = None) -> dict[int, float]:
    """Frame number -> intensity of one raw ``frame,intensity`` label file (BP4D's FERA 2015 ``AU_INT``, DISFA's).

    One rule for both datasets, the stricter of the two they had: every line is a whole frame
    number and an intensity written ``0`` to ``5`` (or the dataset's ``unknown`` code, read as
    -1); a header line first (``Frame,AU06``) and blank lines are allowed. Anything else (a
    binary, empty or ragged file, ``2.5``, ``-1``, a frame ``1.5``) is an error naming the file and line.
    """
    codes = [str(level) for level in range(6)] + ([] if unknown is None else [str(unknown)])
    rule = "'frame,intensity 0-5'" if unknown is None else f"'frame,intensity' (0-5, or {unknown} = unknown)"
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise AUFormerError(f"{path}: not a readable 'frame,intensity' file (not UTF-8 text)") from None
    levels: dict[int, float] = {}
    for number, line in enumerate(lines, start=1):
        cells = [cell.strip() for cell in line.split(",")]
        if not line.strip() or (number == 1 and not cells[0].isdigit()):
            continue  # a blank line, or a header line
        if len(cells) != 2 or not cells[0].isdigit() or cells[1] not in codes:
            raise AUFormerError(f"{path}: line {number}: {line.strip()!r} is not {rule}")
        levels[int(cells[0])] = -1.0 if cells[1] == str(unknown) else float(cells[1])
    if not levels:
        raise AUFormerError(f"{path}: not a readable 'frame,intensity' file (no frame lines)")
    return levels


def _crop(image_rgb: np.ndarray, align: str, detector: str | FaceDetector | None, size: int) -> np.ndarray | None:
    """The ``(size, size, 3)`` face crop, or ``None`` when no face is found."""
    if align == "none":
        return cv2.resize(image_rgb, (size, size), interpolation=cv2.INTER_AREA)
    from auformer.faces.align import align_faces  # lazy: only the auto path needs face detection
    from auformer.faces.detectors import get_detector

    faces = align_faces(image_rgb, get_detector(detector) if isinstance(detector, str) else detector, size=size)
    return faces[0].crop if faces else None


def convert_source(
    source: Source, out_dir: Path, align: str, detector: str | FaceDetector | None, size: int
) -> list[tuple[str, str]]:
    """Convert one source; return the outcome of each frame as ``(outcome, report entry)``, the outcome
    ``written``, ``missing_image``, ``unreadable_image`` or ``no_face``."""
    outcomes = []
    for frame, image in zip(source.frames, source.read()):
        if isinstance(image, tuple):
            outcomes.append(image)
            continue
        crop = _crop(image, align, detector, size)
        if crop is None:
            outcomes.append(("no_face", frame.origin))
            continue
        path = out_dir / frame.out_image
        path.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(path), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
            raise OSError(f"{path}: could not write the crop (disk full or no permission?)")
        outcomes.append(("written", frame.origin))
    return outcomes


def _convert_all(
    sources: list[Source], out_dir: Path, align: str, detector: str | FaceDetector | None, size: int, workers: int
) -> list[list[tuple[str, str]]]:
    progress = tqdm(total=sum(len(source.frames) for source in sources), desc="frames", unit="frame")
    with ProcessPoolExecutor(workers) if workers > 1 else nullcontext() as pool:
        run = pool.map if pool else map
        results = []
        settings = (repeat(x) for x in (out_dir, align, detector, size))
        for source, outcomes in zip(sources, run(convert_source, sources, *settings)):
            results.append(outcomes)
            progress.update(len(source.frames))
    progress.close()
    return results


PREPARED_NAMES = (IMAGES_DIR, "manifest.csv", "folds.json", REPORT_NAME)  # what run_prepare writes into OUT


def _clear_earlier_dataset(out_dir: Path, overwrite: bool) -> None:
    """Refuse an OUT that holds a prepared dataset, or with ``overwrite`` remove exactly what prepare wrote there."""
    earlier = [path.name for path in earlier_outputs(out_dir / name for name in PREPARED_NAMES)]
    if not earlier:
        return
    if not overwrite:
        raise AUFormerError(
            f"{out_dir} already holds a prepared dataset ({', '.join(earlier)}): pass --overwrite to replace it, "
            "or choose another output folder"
        )
    for name in earlier:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:  # a file, or a link (removed, never followed)
            path.unlink()


def run_prepare(
    dataset: str,
    raw_dir: Path,
    out_dir: str | Path,
    sources: list[Source],
    aus: Sequence[int],
    folds: list[list[str]] | Callable[[list[str]], list[list[str]]],
    align: str = "auto",
    detector: str | FaceDetector | None = None,
    size: int = 256,
    workers: int = 1,
    bad_rows: Sequence[str] = (),
    inputs: Sequence[str | os.PathLike] = (),
    notes: Mapping[str, Any] | None = None,
    fold_notes: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> PrepareReport:
    """Convert ``sources`` and write the prepared dataset: crops, manifest, folds, report.

    ``detector`` is a face-detector name (``auformer.faces.detectors``; default the
    package default) or an object with ``detect(image_rgb) -> list[Face]``; it is only
    used with ``align="auto"``. With ``workers > 1`` frames are converted in processes
    (a detector object must then be picklable; a name is built once per process), at
    most as many as memory allows for the largest allowed image (:func:`memory_workers`).
    ``out_dir`` must lie apart from ``raw_dir`` and the other ``inputs`` (a label file).
    Two frames that would write one crop (``dup.png`` and ``dup.jpg``) get distinct names.
    ``folds``: a protocol's fixed folds, or a function dealing the subjects of the written
    frames into folds (your own data: a subject whose every frame failed is in no fold).
    An ``out_dir`` that already holds a prepared dataset is refused unless ``overwrite``,
    which first removes that dataset (its crops, manifest, folds and report; nothing else).
    ``notes`` and ``fold_notes``: a converter's own keys for prepare_report.json and folds.json.
    """
    if align not in ALIGN_MODES:
        raise AUFormerError(f"align must be one of {', '.join(ALIGN_MODES)}, got {align!r}")
    if size < 16:
        raise AUFormerError(f"crop size must be at least 16 pixels, got {size}")
    if align == "auto" and detector is None:
        from auformer.faces.detectors import DEFAULT_DETECTOR

        detector = DEFAULT_DETECTOR
    out_dir = Path(out_dir)
    check_apart(out_dir, [raw_dir, *inputs])
    _clear_earlier_dataset(out_dir, overwrite)
    names = UniqueNames()
    for frame in (frame for source in sources for frame in source.frames):
        frame.out_image = names.claim(frame.out_image)
        resolve_inside(out_dir, frame.out_image, f"{frame.origin}: crop name")  # converters build them from raw names
    workers = memory_workers(workers)
    out_dir.mkdir(parents=True, exist_ok=True)
    detector_name = "none" if align == "none" else getattr(detector, "name", str(detector))
    report = PrepareReport(
        dataset, str(raw_dir), str(out_dir), align, detector_name, size, bad_rows=list(bad_rows), notes=dict(notes or {})
    )
    outcomes = _convert_all(sources, out_dir, align, detector, size, workers)
    written: list[Frame] = []
    for source, source_outcomes in zip(sources, outcomes):
        for frame, (outcome, entry) in zip(source.frames, source_outcomes):
            if outcome == "written":
                written.append(frame)
            else:
                getattr(report, outcome).append(entry)
    report.frames_labelled = sum(len(source.frames) for source in sources)
    report.written = len(written)
    labels = np.stack([frame.labels for frame in written]) if written else np.zeros((0, len(aus)), np.float32)  # (M, N)
    report.positives = dict(zip(au_columns(aus), (labels == 1).sum(axis=0).tolist()))
    report.unknown_labels = dict(zip(au_columns(aus), (labels < 0).sum(axis=0).tolist()))
    intensity = None
    if any(frame.intensity is not None for frame in written):
        unknown = np.full(len(aus), -1.0, np.float32)
        intensity = np.stack([unknown if frame.intensity is None else frame.intensity for frame in written])  # (M, N)
        report.intensity_known = dict(zip(au_columns(aus), (intensity >= 0).sum(axis=0).tolist()))
    subjects = [frame.subject for frame in written]
    if callable(folds):
        folds = folds(subjects)
    report.subjects_in_no_fold = sorted(set(subjects) - {s for fold in folds for s in fold})
    table = AUTable(out_dir, [frame.out_image for frame in written], subjects, labels, list(aus), intensity)
    write_manifest(table, out_dir)
    write_folds(out_dir, folds, aus, fold_notes)
    atomic_write_text(out_dir / REPORT_NAME, report.to_json())
    print(report.summary())
    print(f"wrote {out_dir / 'manifest.csv'}, {out_dir / 'folds.json'} and {out_dir / REPORT_NAME}")
    return report


def default_workers() -> int:
    """Worker processes for ``auformer prepare``: the CPU count, at most 8."""
    return max(1, min(8, os.cpu_count() or 1))


def available_memory() -> int:
    """Bytes of memory available to new work: Linux's ``MemAvailable``, else half the physical memory."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2


def memory_workers(workers: int) -> int:
    """``workers``, or fewer, so that all of them holding an image at the pixel limit fit in half the available memory."""
    per_worker, available = max_pixels() * WORKER_BYTES_PER_PIXEL, available_memory()
    fit = max(1, available // 2 // per_worker)
    if workers > fit:
        print(
            f"using {fit} worker processes, not {workers}: each may need {per_worker / 2**30:.1f} GB for an image at "
            f"the pixel limit ({available / 2**30:.1f} GB available)"
        )
    return min(workers, fit)
