"""Writers: result tables to CSV (``auformer`` or OpenFace columns), resume, and a run's ``detect.json``.

What makes a killed ``detect`` resumable lives here: a CSV is appended to table by table
(`CsvWriter`); `completed_frames` cuts an interrupted CSV back to whole frames and says where
to continue; `written_faces` carries a video's face numbers over; ``detect.json`` records
what wrote the CSVs (`run_identity`), and `check_resume` refuses a ``--resume`` that would
append rows of another checkpoint, format or column set. `Outputs` plans one run's file names.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from auformer.detect.detector import INTENSITY_SUFFIX
from auformer.errors import AUFormerError
from auformer.faces import Face
from auformer.files import UniqueNames, resolve, resolve_inside
from auformer.model.checkpoint import file_sha256

if TYPE_CHECKING:
    from auformer.detect.detector import Detector

# auformer name -> OpenFace name (OpenFace's frame numbers start at 1).
OPENFACE_NAMES = {"face": "face_id", "time_s": "timestamp", "face_score": "confidence"}
SUMMARY_NAME = "detect.json"  # in OUT: what wrote the CSVs (checkpoint hash, format, columns), counts, skipped inputs
IMAGES_CSV = "images.csv"
ALIGNED_DIR = "aligned"  # --save-aligned: OUT/aligned/STEM_frame<N>_face<K>.png, OpenFace's -simalign


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


class CsvWriter:
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

    A killed run can leave half a row, and the rows of its last frame may be
    incomplete (one row per face); both are cut, so a resumed run redoes that frame
    and the CSV holds every frame exactly once. Rows are read by the csv module, not
    line by line: a file name holding a newline is one quoted cell over two lines.
    Streams the file: memory is one entry per input, not per row.
    """
    done: dict[str, int] = {}
    keep, last_key = 0, None  # bytes to keep; (input, frame) of the rows since `keep`
    read = {"end": 0, "all": False}  # byte offset after the lines the csv reader has taken; whether they ran out

    def not_ours(line: int) -> AUFormerError:
        return AUFormerError(f"{path}: line {line} is not a row this command wrote; pass --overwrite")

    def whole_lines(file) -> Iterator[str]:
        for number, line in enumerate(iter(file.readline, b""), start=1):
            if not line.endswith(b"\n"):
                break  # half a line: the write was killed
            try:
                text = line.decode()
            except UnicodeDecodeError:
                raise not_ours(number) from None
            read["end"] = file.tell()
            yield text
        read["all"] = True

    with open(path, "rb") as file:
        rows = csv.reader(whole_lines(file), strict=True)
        try:
            header = next(rows, [])
            if "input" not in header or "frame" not in header:
                return {}
            column_input, column_frame = header.index("input"), header.index("frame")
            keep = start = read["end"]
            for cells in rows:
                key = (cells[column_input], int(cells[column_frame]) - (1 if openface else 0))
                if key != last_key:
                    if last_key is not None:
                        done[last_key[0]] = last_key[1]
                    keep, last_key = start, key
                start = read["end"]
        except csv.Error:
            if not read["all"]:  # a quoted cell the kill cut off ends the file; anywhere else it is no row of ours
                raise not_ours(rows.line_num) from None
        except (ValueError, IndexError):
            raise not_ours(rows.line_num) from None
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
class Outputs:
    """Where one ``detect`` run writes: ``images.csv``, a CSV per video, a plot name per photo, all distinct.

    Two videos ``a/x.mp4`` and ``b/x.mp4`` get ``x.csv`` and ``x_2.csv``, two photos ``a/x.png``
    and ``b/x.png`` the plots ``x_face0.png`` and ``x_2_face0.png`` (`auformer.files.UniqueNames`).
    """

    out: Path
    video_csv: dict[Path, Path]  # video -> its CSV
    plot_prefix: dict[str, Path] | None  # photo (as the table names it) -> OUT/plots/STEM, None without --plot
    # photo or video (as the table names it) -> OUT/aligned/STEM, None without --save-aligned
    aligned_prefix: dict[str, Path] | None = None

    @classmethod
    def plan(cls, out: Path, images: list[Path], videos: list[Path], plot: bool, aligned: bool = False) -> Outputs:
        csv_names, plot_names = UniqueNames([IMAGES_CSV, SUMMARY_NAME]), UniqueNames()
        video_csv = {video: out / csv_names.claim(f"{video.stem}.csv") for video in videos}
        plot_prefix = {str(path): out / "plots" / plot_names.claim(path.stem) for path in images} if plot else None
        aligned_prefix = None
        if aligned:  # a video's crops are named after its CSV, each photo's after its own distinct stem
            aligned_names = UniqueNames([csv.stem for csv in video_csv.values()])
            aligned_prefix = {str(video): out / ALIGNED_DIR / csv.stem for video, csv in video_csv.items()}
            aligned_prefix.update({str(path): out / ALIGNED_DIR / aligned_names.claim(path.stem) for path in images})
        return cls(out, video_csv, plot_prefix, aligned_prefix)

    @property
    def csv_files(self) -> list[Path]:
        return [self.out / IMAGES_CSV, *self.video_csv.values()]

    def previous(self) -> list[Path]:
        """Files of an earlier run in OUT: its ``detect.json``, the CSVs this run writes, its plots."""
        found = [path for path in (self.out / SUMMARY_NAME, *self.csv_files) if path.exists()]
        return found + sorted((self.out / "plots").glob("*.png")) + sorted((self.out / ALIGNED_DIR).glob("*.png"))

    def remove_previous(self) -> None:
        """``--overwrite``: delete the earlier run's CSVs (those its ``detect.json`` lists and those this run writes)
        and plots; the listed names are kept inside OUT (`resolve_inside`), whatever the file says."""
        try:
            listed = read_summary(self.out).get("csv", []) if (self.out / SUMMARY_NAME).is_file() else []
        except AUFormerError:  # an unreadable detect.json is replaced like the rest
            listed = []
        listed = listed if isinstance(listed, list) else []
        doomed = {resolve_inside(self.out, str(name), str(self.out / SUMMARY_NAME)) for name in listed}
        for path in {path for path in doomed if path.suffix == ".csv"} | {resolve(path) for path in self.previous()}:
            if path.is_file():
                path.unlink()


def run_identity(
    detector: Detector, openface: bool, every: int = 1, start: float | None = None, end: float | None = None
) -> dict:
    """What a ``--resume`` must share with the run it continues: the checkpoint's files (sha256), format and columns,
    and the settings that change the values in the rows (thresholds, face detector, which frames)."""
    empty = detector.empty_table()  # the columns this checkpoint writes
    return {
        "checkpoint": str(detector.checkpoint),
        "checkpoint_sha256": {path.name: file_sha256(path) for path in detector.files},
        "format": "openface" if openface else "auformer",
        "columns": list((to_openface(empty) if openface else empty).columns),
        "settings": {
            "threshold": dict(zip(detector.au_columns, map(float, detector.thresholds))),
            "face_detector": detector.face_detector.name,
            "detect_every": detector.detect_every,
            "every": every,
            "start": start,
            "end": end,
        },
    }


def read_summary(out: Path) -> dict:
    """OUT's ``detect.json``, or one line saying it is not one this command wrote."""
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


def check_resume(outputs: Outputs, identity: dict) -> None:
    """Refuse (one line) a ``--resume`` whose checkpoint, format or columns differ from the run that wrote OUT,
    or whose CSVs have another header: appended rows would not match the columns above them."""
    out, advice = outputs.out, "pass --overwrite to replace its results, or choose another --out"
    if not (out / SUMMARY_NAME).is_file():
        if any(path.exists() for path in outputs.csv_files):
            raise AUFormerError(
                f"{out}: --resume needs {SUMMARY_NAME}, which says what wrote the CSVs there, and it is missing; {advice}"
            )
        return
    previous = read_summary(out)
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
    settings = previous.get("settings", identity["settings"])  # an older detect.json does not record them
    changed = [
        key for key in identity["settings"] if not isinstance(settings, dict) or settings.get(key) != identity["settings"][key]
    ]
    if changed:
        raise AUFormerError(
            f"{out}: --resume with another {', '.join(changed)} than the run there (its detect.json, 'settings'): rows "
            f"of both would not mean the same; pass that run's options, or {advice}"
        )
    expected = ",".join(identity["columns"])
    for path in outputs.csv_files:
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as file:
                header = file.readline().decode("utf-8", errors="replace").strip()
            if header != expected:
                raise AUFormerError(f"{path}: its header is not the one this run writes ({expected[:60]}...); {advice}")
