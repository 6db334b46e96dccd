"""Atomic file writes: every file auformer writes goes through a temporary file and a rename.

A process killed mid-write (SIGKILL, out of memory, a cluster pre-empting the job)
then leaves the old file or the new one, never half a file. This is the project's
one copy of that mechanism: checkpoints, tables, plots, exports and datasets use it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    The temporary name keeps the suffix (``.png``, ``.onnx``, ``.npz``), since writers such
    as matplotlib and numpy pick the format from it. It is created with the normal
    umask (not ``mkstemp``'s private 0600), so the result is readable like any file.
    On an error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
