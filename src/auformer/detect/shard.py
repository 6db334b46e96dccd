"""A corpus for ``auformer detect`` on many ranks: its inputs held compactly, their output names, each rank's share.

A list of a million paths held as a Python list of strings costs ~100 bytes a path; here the
paths (and the user's ids) are one bytes buffer plus an int64 offset array (`Strings`), so a
rank's memory stays flat in the corpus size. Sharding is a pure function of the list and
the file sizes (`assign`), so every rank of every node computes the same split without
talking to the others.
"""

from __future__ import annotations

import csv
import hashlib
import heapq
import os
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from auformer.detect.sources import check_name
from auformer.errors import AUFormerError
from auformer.files import resolve, resolve_inside

SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")  # an id becomes a file name: no '/', no leading '.'


class Strings:
    """Many strings as one UTF-8 buffer and an int64 offset array: ~8 bytes a string beyond the text itself."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._ends = array("q")

    def append(self, text: str) -> None:
        self._buffer += text.encode()
        self._ends.append(len(self._buffer))

    def freeze(self) -> Strings:
        """Move the growable buffers into read-only numpy arrays (no more appends)."""
        self._buffer, self._ends = bytes(self._buffer), np.frombuffer(self._ends, dtype=np.int64)
        return self

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> str:
        begin = int(self._ends[index - 1]) if index else 0
        return self._buffer[begin : int(self._ends[index])].decode()

    def __iter__(self) -> Iterator[str]:
        return (self[index] for index in range(len(self)))

    def digest(self) -> str:
        """sha256 of the strings in order: what a ``--resume`` checks the corpus against."""
        return hashlib.sha256(bytes(self._buffer) + np.asarray(self._ends, dtype=np.int64).tobytes()).hexdigest()


@dataclass
class Corpus:
    """A run's inputs in a fixed order: paths, where relative ones are resolved, the user's ids if given."""

    paths: Strings
    root: Path | None  # a list file's folder: its paths are resolved inside it; None for INPUTs named on the command line
    ids: Strings | None  # one id per path (a CSV list with an `id` column), else None
    source: str  # where the paths came from, for messages
    out: Path | None = None  # the run's output folder, resolved: a list's entries may not lie in it

    def path(self, index: int) -> Path:
        """Input ``index`` as a path; a list's entries must stay inside the list's folder and out of the output folder
        (whose ``csv/`` and ``done/`` an ``--overwrite`` clears before any input is read)."""
        text, where = self.paths[index], f"{self.source} entry {index + 1}"
        if self.root is None:
            return Path(text)
        target = resolve_inside(self.root, text, where)  # absolute, '..' out, a link out: refused
        if self.out is not None and target.is_relative_to(self.out):
            raise AUFormerError(f"{where}: path {text!r} lies in the output folder {self.out}: choose one apart from the inputs")
        return check_name(self.root / text)

    def name(self, index: int) -> str:
        """The stem of input ``index``'s output files: the user's id, else its position and file stem (unique)."""
        if self.ids is not None:
            return self.ids[index]
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(self.paths[index]).stem)[:100]
        return f"{index:07d}_{stem}"

    def sizes(self) -> np.ndarray:
        """(N,) int64 file sizes in bytes, the work estimate for balancing (0 for a missing file: a bad input)."""
        sizes = np.zeros(len(self.paths), dtype=np.int64)
        for index in range(len(sizes)):
            try:
                sizes[index] = os.stat(self.path(index)).st_size
            except OSError:
                pass
        return sizes


def from_paths(paths: Iterable[Path], source: str) -> Corpus:
    """The inputs named on the command line (files, folders already expanded), in the order given."""
    strings = Strings()
    for path in paths:
        strings.append(str(path))
    return Corpus(strings.freeze(), None, None, source)


def read_list(list_file: str | os.PathLike, out: str | os.PathLike | None = None) -> Corpus:
    """``--list FILE``: one path per line, or a ``.csv`` with a ``path`` column and an optional ``id`` column.

    Paths are relative to the list's folder and must stay inside it (`auformer.files.resolve_inside`),
    and out of the output folder ``out``.
    Ids name the output files, so each must be a plain file name (letters, digits, ``.``, ``_``, ``-``)
    and unique. Streamed: the list is never held as per-row Python objects.
    """
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"--list: no such file: {list_file}")
    paths, ids = Strings(), None
    with open(list_file, newline="", encoding="utf-8-sig") as file:  # a BOM: Excel's "CSV UTF-8"
        try:
            if list_file.suffix.lower() == ".csv":
                rows = csv.reader(file)
                header = next(rows, [])
                if "path" not in header:
                    raise AUFormerError(f"{list_file}: a CSV list needs a 'path' column (and may have an 'id' column)")
                column_path = header.index("path")
                column_id = header.index("id") if "id" in header else None
                ids = Strings() if column_id is not None else None
                for number, row in enumerate(rows, start=2):
                    if len(row) != len(header):
                        raise AUFormerError(f"{list_file} line {number}: {len(row)} cells, the header has {len(header)}")
                    paths.append(row[column_path])
                    if ids is not None:
                        if not SAFE_ID.fullmatch(row[column_id]):
                            raise AUFormerError(
                                f"{list_file} line {number}: id {row[column_id][:60]!r} is not a plain file name "
                                "(letters, digits, '.', '_', '-'; not starting with '.')"
                            )
                        ids.append(row[column_id])
            else:
                for line in file:
                    if line.strip():
                        paths.append(line.rstrip("\r\n"))
        except UnicodeDecodeError as error:
            raise AUFormerError(f"{list_file}: not UTF-8 text ({error})") from None
    if not len(paths):
        raise AUFormerError(f"{list_file}: lists no inputs")
    if ids is not None:
        _check_unique(ids.freeze(), list_file)
    return Corpus(paths.freeze(), list_file.parent, ids, str(list_file), resolve(out) if out is not None else None)


def _check_unique(ids: Strings, source: Path) -> None:
    """Refuse a repeated id (two inputs would write one file): 8-byte hashes sorted, equal neighbours compared."""
    hashes = np.fromiter(
        (int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") for text in ids),
        dtype=np.uint64,
        count=len(ids),
    )
    order = np.argsort(hashes, kind="stable")
    for k in np.flatnonzero(hashes[order[:-1]] == hashes[order[1:]]):
        left, right = sorted((int(order[k]), int(order[k + 1])))
        if ids[left] == ids[right]:
            raise AUFormerError(f"{source}: id {ids[left]!r} is given twice (entries {left + 1} and {right + 1})")


def assign(sizes: np.ndarray, world_size: int) -> np.ndarray:
    """(N,) the rank that handles each input: biggest first, each to the least-loaded rank (ties: lower rank).

    Greedy longest-processing-time scheduling, within 4/3 of the best balance; a pure function
    of the sizes, so every rank computes the same split. Each input has exactly one owner.
    """
    owner = np.zeros(len(sizes), dtype=np.int32)
    if world_size == 1:
        return owner
    loads = [(0, rank) for rank in range(world_size)]  # (bytes so far, rank): a heap
    for index in np.argsort(-sizes, kind="stable"):
        load, rank = heapq.heappop(loads)
        owner[index] = rank
        heapq.heappush(loads, (load + int(sizes[index]) + 1, rank))  # +1: empty files still spread by count
    return owner
