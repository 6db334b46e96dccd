"""The prepared-dataset format: ``manifest.csv`` + ``folds.json``, and ME-GraphAU list files.

A prepared dataset is a folder any tool can produce::

    manifest.csv   image,subject,AU01,AU02,...   (1, 0, empty or -1 = unknown)
                   optional AU12_int,... columns: intensity 0-5 (empty or -1 = unknown)
    folds.json     {"folds": [{"test_subjects": [...]}, ...], "aus": ["AU01", ...]}
    <images>       paths in manifest.csv are relative to the folder, and stay inside it

In memory a split is an :class:`AUTable`. Unknown labels stay ``-1`` all the way to
the loss and the metrics, which mask them out; they are never turned into 0.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from auformer.aus import INTENSITY_MAX, au_columns, parse_au
from auformer.errors import AUFormerError
from auformer.files import atomic_write_text, resolve, resolve_inside

MANIFEST_NAME = "manifest.csv"
FOLDS_NAME = "folds.json"
_AU_COLUMN = re.compile(r"^AU\d+$")
INTENSITY_SUFFIX = "_int"  # manifest intensity columns: AU12_int beside AU12
# Subject ids of BP4D (F001, M012), DISFA (SN001) and CASME II (sub01) in list-file paths.
_SUBJECT_IN_PATH = re.compile(r"^(?:[FM]\d{3}|SN\d{3}|sub\d+)$", re.IGNORECASE)


@dataclass
class AUTable:
    """One dataset split in memory: images, their subjects and their AU labels.

    ``labels`` is ``(M, N)`` float32 with 1 (present), 0 (absent) or -1 (unknown);
    column ``j`` belongs to FACS AU ``aus[j]``. Image paths are relative to ``root``.
    ``intensity`` is ``None`` (no intensity annotation) or ``(M, N)`` float32 with 0-5 or
    -1 (unknown, also for AUs the dataset does not code for intensity).
    """

    root: Path
    images: list[str]
    subjects: list[str]
    labels: np.ndarray
    aus: list[int]
    intensity: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.labels = np.asarray(self.labels, dtype=np.float32).reshape(len(self.images), len(self.aus))  # (M, N)
        if self.intensity is not None:
            self.intensity = np.asarray(self.intensity, dtype=np.float32).reshape(self.labels.shape)  # (M, N)
        if len(self.subjects) != len(self.images):
            raise AUFormerError(f"AUTable: {len(self.images)} images but {len(self.subjects)} subjects")

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int] | np.ndarray) -> AUTable:
        """Rows ``indices`` (integer positions or a boolean mask of length M), in that order."""
        rows = np.asarray(indices)
        rows = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        return AUTable(
            root=self.root,
            images=[self.images[i] for i in rows],
            subjects=[self.subjects[i] for i in rows],
            labels=self.labels[rows],
            aus=list(self.aus),
            intensity=None if self.intensity is None else self.intensity[rows],
        )

    def select_aus(self, aus: Sequence[int | str]) -> AUTable:
        """Keep only the label columns of ``aus``, in that order (e.g. the 5 cross-domain AUs)."""
        wanted = [parse_au(au) for au in aus]
        missing = [au for au in wanted if au not in self.aus]
        if missing:
            present = [au for au in wanted if au in self.aus]
            fix = f"; keep the ones it has with --set data.aus=[{','.join(map(str, present))}]" if present else ""
            raise AUFormerError(
                f"AUs {', '.join(au_columns(missing))} are not in this dataset (it has {', '.join(au_columns(self.aus))})"
                f"{fix}; the run cannot start until they match"
            )
        columns = [self.aus.index(au) for au in wanted]
        intensity = None if self.intensity is None else self.intensity[:, columns]
        return AUTable(self.root, list(self.images), list(self.subjects), self.labels[:, columns], wanted, intensity)

    def image_path(self, index: int) -> Path:
        """Absolute path of image ``index``; an :class:`AUFormerError` when it leads out of ``root``
        (absolute, ``..``, or a link out of it), however the table was made."""
        return resolve_inside(self.root, self.images[index], str(self.root))


def _dataset_file(path: str | Path, name: str) -> Path:
    """``path`` itself, or ``path/name`` when ``path`` is a dataset folder; an error when it is missing."""
    path = Path(path)
    file = path / name if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no {name} here (expected a dataset folder holding {name} or the file itself)")
    return file


def _read_csv_rows(file: Path) -> tuple[list[str], list[list[str]], list[int]]:
    """Header, rows and their line numbers of a CSV (cells stripped); a row with another cell count than the header,
    or a file without rows, is an error naming the file and line."""
    numbered: list[tuple[int, list[str]]] = []  # (line number, cells) of the non-blank lines
    try:
        with open(file, newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            numbered = [(reader.line_num, [cell.strip() for cell in row]) for row in reader if any(cell.strip() for cell in row)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise AUFormerError(f"{file}: not a readable UTF-8 CSV ({error})") from None
    if not numbered:
        raise AUFormerError(f"{file}: empty file (expected a header image,subject,AU01,... and one row per image)")
    (_, header), body = numbered[0], numbered[1:]
    if not body:
        raise AUFormerError(f"{file}: no rows after the header (an empty manifest)")
    for number, row in body:
        if len(row) != len(header):
            raise AUFormerError(f"{file}: line {number}: {len(row)} columns, the header has {len(header)}")
    return header, [row for _, row in body], [number for number, _ in body]


def _split_header(header: list[str]) -> tuple[list[int], list[int]]:
    """Indices of the AU columns after ``image,subject``: (occurrence ``AU12``, intensity ``AU12_int``)."""
    occurrence = [i for i in range(2, len(header)) if not header[i].endswith(INTENSITY_SUFFIX)]
    intensity = [i for i in range(2, len(header)) if header[i].endswith(INTENSITY_SUFFIX)]
    return occurrence, intensity


def _parse_au_header(file: Path, header: list[str], occurrence: list[int]) -> list[int]:
    """AU numbers of the occurrence columns at ``occurrence`` (``AU12``); intensity columns are read elsewhere."""
    if header[:2] != ["image", "subject"]:
        raise AUFormerError(f"{file}: the first columns must be 'image,subject', found {','.join(header[:2])!r}")
    aus: list[int] = []
    for column in (header[i] for i in occurrence):
        if not _AU_COLUMN.match(column):
            raise AUFormerError(f"{file}: column {column!r} is not an AU column (expected names like AU01, AU12)")
        try:
            au = parse_au(column)
        except ValueError as error:
            raise AUFormerError(f"{file}: column {column!r}: {error}") from None
        if au in aus:
            raise AUFormerError(f"{file}: AU{au} appears in two columns")
        aus.append(au)
    if not aus:
        raise AUFormerError(f"{file}: no AU columns (expected image,subject,AU01,...)")
    return aus


def _check_images(file: Path, root: Path, images: list[str], lines: list[int], on_missing: str) -> np.ndarray:
    """Boolean mask of the rows whose image path stays inside ``root`` and exists; raise or warn about the others.

    A path out of ``root`` (absolute, ``..``, a link out of it) is an :class:`AUFormerError` naming the
    file and line, a missing image a ``FileNotFoundError`` with the count; ``on_missing="skip"`` drops
    both with a warning, ``"keep"`` keeps every row for the caller (``--skip-bad`` lists them when it
    decodes each image: :func:`auformer.data.images.drop_unreadable`).
    """
    if on_missing not in ("error", "skip", "keep"):
        raise AUFormerError(f"on_missing must be 'error', 'skip' or 'keep', got {on_missing!r}")
    ok = np.ones(len(images), dtype=bool)
    if on_missing == "keep":
        return ok
    outside, missing = [], []
    for row, (line, image) in enumerate(zip(lines, images)):
        try:
            path = resolve_inside(root, image, f"{file}: line {line}")
        except AUFormerError as error:
            outside.append(str(error))
            ok[row] = False
            continue
        if not path.is_file():
            missing.append(image)
            ok[row] = False
    if outside:
        more = f" ({len(outside)} such rows)" if len(outside) > 1 else ""
        if on_missing == "error":
            raise AUFormerError(outside[0] + more)
        warnings.warn(outside[0] + more + "; skipped", stacklevel=3)
    if missing:
        message = f"{file}: {len(missing)} of {len(images)} image files are missing (first: {missing[0]})"
        if on_missing == "error":
            raise FileNotFoundError(message + "; pass --skip-bad (Python: on_missing='skip') to drop them")
        warnings.warn(message + "; skipped", stacklevel=3)
    return ok


def read_manifest(path: str | Path, on_missing: str = "error") -> AUTable:
    """Read a prepared dataset (its folder or its ``manifest.csv``) into an :class:`AUTable`.

    Labels must be ``1``, ``0``, empty or ``-1``; anything else (a stray ``9`` from raw
    BP4D, an intensity ``3``) is an error naming the file, line, column and value, since
    guessing its meaning would corrupt the training signal. Image paths must stay inside the
    folder (no absolute path, ``..`` out of it or link out of it: a bad row named by line).
    Bad paths and missing image files are counted: ``on_missing="error"`` (default) raises,
    ``"skip"`` drops them with a warning that gives the count, ``"keep"`` leaves them to the
    caller (``--skip-bad`` lists them).
    """
    file = _dataset_file(path, MANIFEST_NAME)
    header, rows, lines = _read_csv_rows(file)
    occurrence, intensity_columns = _split_header(header)
    aus = _parse_au_header(file, header, occurrence)
    intensity = _read_intensity_columns(file, header, intensity_columns, rows, lines, aus)
    header = [header[0], header[1], *(header[i] for i in occurrence)]
    raw = np.array([[row[i] for i in occurrence] for row in rows], dtype=str).reshape(len(rows), len(aus))  # (M, N)
    labels = np.full(raw.shape, -1.0, dtype=np.float32)
    labels[(raw == "1") | (raw == "1.0")] = 1.0
    labels[(raw == "0") | (raw == "0.0")] = 0.0
    valid = np.isin(raw, ["1", "1.0", "0", "0.0", "", "-1", "-1.0"])
    if not valid.all():
        row, col = np.argwhere(~valid)[0]
        raise AUFormerError(
            f"{file}: line {lines[row]}, column {header[col + 2]}: invalid label {str(raw[row, col])!r} "
            "(allowed: 1, 0, empty or -1 for unknown)"
        )
    table = AUTable(file.parent, [row[0] for row in rows], [row[1] for row in rows], labels, aus, intensity)
    for column, values in (("image path", table.images), ("subject", table.subjects)):
        if "" in values:
            raise AUFormerError(f"{file}: line {lines[values.index('')]}: empty {column}")
    first_line: dict[str, int] = {}
    for line, image in zip(lines, table.images):
        if first_line.setdefault(image, line) != line:
            raise AUFormerError(f"{file}: line {line}: duplicate row for image {image!r} (first on line {first_line[image]})")
    usable = _check_images(file, table.root, table.images, lines, on_missing)
    return table if usable.all() else table.subset(usable)


def _read_intensity_columns(
    file: Path, header: list[str], columns: list[int], rows: list[list[str]], lines: list[int], aus: list[int]
) -> np.ndarray | None:
    """``(M, N)`` intensities from the ``AU12_int`` columns at ``columns`` (-1 unknown or not coded), None without them."""
    if not columns:
        return None
    intensity = np.full((len(rows), len(aus)), -1.0, dtype=np.float32)  # (M, N)
    for index in columns:
        column = header[index]
        try:
            au = parse_au(column.removesuffix(INTENSITY_SUFFIX))
        except ValueError as error:
            raise AUFormerError(f"{file}: column {column!r}: {error}") from None
        if au not in aus:
            raise AUFormerError(f"{file}: intensity column {column!r} has no occurrence column {au_columns([au])[0]}")
        for number, (row, line) in enumerate(zip(rows, lines)):
            try:
                value = float(row[index] or -1)
            except ValueError:
                value = float("nan")
            if not (value == -1 or 0 <= value <= INTENSITY_MAX):  # NaN (not a number) is bad too
                raise AUFormerError(
                    f"{file}: line {line}, column {column}: invalid intensity {row[index]!r} "
                    "(allowed: 0 to 5, empty or -1 for unknown)"
                )
            intensity[number, aus.index(au)] = value
    return intensity


def write_manifest(table: AUTable, out_dir: str | Path) -> Path:
    """Write ``out_dir/manifest.csv`` atomically; unknown labels are written empty.

    With ``table.intensity``, an ``AU12_int`` column follows the occurrence columns for each
    AU with at least one known intensity (an AU never coded for intensity gets no column).

    Image paths are rewritten relative to ``out_dir`` when the table's root is elsewhere (a
    subset saved in a folder above its images still points at the same files). Every path
    must stay inside ``out_dir``, as `read_manifest` requires: one that would not is an
    :class:`AUFormerError`, and nothing is written.
    """
    out_dir = Path(out_dir)
    if resolve(table.root) == resolve(out_dir):
        images = table.images
    else:
        images = [os.path.relpath(table.root / image, out_dir) for image in table.images]
    for row, image in enumerate(images):
        resolve_inside(out_dir, image, f"{out_dir / MANIFEST_NAME}: row {row + 1}")
    cells = np.where(table.labels > 0.5, "1", np.where(table.labels == 0, "0", ""))  # (M, N)
    header = ["image", "subject", *au_columns(table.aus)]
    if table.intensity is not None:
        coded = (table.intensity >= 0).any(axis=0)  # (N,)
        values = np.vectorize(lambda v: f"{v:g}" if v >= 0 else "", otypes=[str])(table.intensity[:, coded]).reshape(
            len(table), -1
        )
        cells = np.concatenate([cells, values], axis=1)  # (M, N + coded)
        header += [column + INTENSITY_SUFFIX for column in np.array(au_columns(table.aus))[coded]]

    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([image, subject, *row] for image, subject, row in zip(images, table.subjects, cells.tolist()))
    atomic_write_text(out_dir / MANIFEST_NAME, text.getvalue())
    return out_dir / MANIFEST_NAME


def read_folds(path: str | Path) -> tuple[list[list[str]], list[int]]:
    """Read ``folds.json`` (or the folder holding it): (test subjects per fold, AU numbers)."""
    file = _dataset_file(path, FOLDS_NAME)
    try:
        data = json.loads(file.read_text())
        folds = [[str(s) for s in fold["test_subjects"]] for fold in data["folds"]]
        aus = [parse_au(au) for au in data["aus"]]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise AUFormerError(
            f'{file}: expected {{"folds": [{{"test_subjects": [...]}}, ...], "aus": ["AU01", ...]}} ({error!r})'
        ) from None
    first_fold: dict[str, int] = {}
    for fold, subjects in enumerate(folds):
        for subject in subjects:
            if first_fold.setdefault(subject, fold) != fold:
                raise AUFormerError(
                    f"{file}: subject {subject!r} is in folds {first_fold[subject]} and {fold} (folds must be subject-exclusive)"
                )
    return folds, aus


def write_folds(
    out_dir: str | Path, folds: Sequence[Sequence[str]], aus: Sequence[int], notes: Mapping[str, Any] | None = None
) -> Path:
    """Write ``out_dir/folds.json`` atomically; ``notes``: more keys, e.g. Aff-Wild2's official split (readers ignore them)."""
    data = {"folds": [{"test_subjects": list(fold)} for fold in folds], "aus": au_columns(aus), **(notes or {})}
    atomic_write_text(Path(out_dir) / FOLDS_NAME, json.dumps(data, indent=2) + "\n")
    return Path(out_dir) / FOLDS_NAME


def subject_from_path(image: str) -> str:
    """Subject id in an image path: a BP4D/DISFA/CASME II-style folder name, else the first folder."""
    parts = Path(image).parts
    for part in parts[:-1]:
        if _SUBJECT_IN_PATH.match(part):
            return part
    return parts[0] if len(parts) > 1 else "unknown"


def read_list_files(
    img_list: str | Path, label_list: str | Path, aus: Sequence[int], image_root: str | Path, on_missing: str = "error"
) -> AUTable:
    """Read ME-GraphAU list files (``*_img_path_foldK.txt`` + ``*_label_foldK.txt``).

    One image path per line (relative to ``image_root``, and inside it) and, on the same
    line of the label file, one space-separated ``1``/``0``/``-1`` per AU of ``aus``.
    Subjects are parsed from the paths (:func:`subject_from_path`). Paths out of
    ``image_root`` and missing images are handled as ``on_missing`` says (`read_manifest`).
    """
    img_list, label_list = Path(img_list), Path(label_list)
    for file in (img_list, label_list):
        if not file.is_file():
            raise FileNotFoundError(f"{file}: list file not found")
    numbered = [(number, line.strip()) for number, line in enumerate(img_list.read_text().splitlines(), 1) if line.strip()]
    images = [image for _, image in numbered]
    label_lines = [line for line in label_list.read_text().splitlines() if line.strip()]
    if len(images) != len(label_lines):
        raise AUFormerError(f"{label_list}: {len(label_lines)} label lines but {img_list} has {len(images)} images")
    labels = np.empty((len(images), len(aus)), dtype=np.float32)  # (M, N)
    for line_number, line in enumerate(label_lines, start=1):
        values = line.split()
        if len(values) != len(aus):
            raise AUFormerError(f"{label_list}: line {line_number}: {len(values)} labels, expected {len(aus)} (one per AU)")
        try:
            labels[line_number - 1] = [float(v) for v in values]
        except ValueError:
            raise AUFormerError(f"{label_list}: line {line_number}: labels must be numbers, got {line.strip()!r}") from None
    bad = ~np.isin(labels, [1.0, 0.0, -1.0])
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise AUFormerError(f"{label_list}: line {row + 1}: labels must be 1, 0 or -1, got {label_lines[row].strip()!r}")
    table = AUTable(Path(image_root), images, [subject_from_path(image) for image in images], labels, [parse_au(a) for a in aus])
    usable = _check_images(img_list, table.root, images, [number for number, _ in numbered], on_missing)
    return table if usable.all() else table.subset(usable)
