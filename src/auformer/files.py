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


def _file_mode() -> int:
    """The mode a new file gets under this process's umask (read once: os.umask can only be read by setting it)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    The temporary name keeps the suffix (``.png``, ``.onnx``, ``.npz``), since writers such
    as matplotlib and numpy pick the format from it. Before the rename the file gets the
    umask's normal mode: some writers (safetensors' ``save_file``) create private 0600
    files, and checkpoints and package data must be readable like any file.
    On an error the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
