"""Atomic file writes: every file auformer writes goes through a temporary file and a rename.

A process killed mid-write (SIGKILL, out of memory, a cluster pre-empting the job)
then leaves the old file or the new one, never half a file. This is the project's
one copy of that mechanism: checkpoints, tables, plots, exports and datasets use it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from auformer.errors import AUFormerError


def _file_mode() -> int:
    """The mode a new file gets under this process's umask (read once: os.umask can only be read by setting it)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()
LOW_SPACE = 1 << 20  # bytes: a write that fails with less free than this failed for want of space


def _os_error(error: Exception, path: Path) -> Exception:
    """``error`` as the ``OSError`` it is, naming ``path``, when a write failed because of the folder's disk.

    Writers report the same OS failure their own ways: Python's ``open`` as ``OSError`` (without the
    name when ``write`` fails), safetensors as ``SafetensorError`` ("I/O error: No space left on
    device"), ``torch.save`` as a ``RuntimeError`` with no reason at all. Asked once here, every
    writer's full, read-only or forbidden disk reaches the CLI as one line (`errors.environment_problem`).
    """
    if isinstance(error, AUFormerError):
        return error  # the caller's own verdict on what it wrote
    if isinstance(error, OSError) and error.errno is not None:
        return error if error.filename is not None else OSError(error.errno, error.strerror, str(path))
    try:
        folder = os.statvfs(path.parent)
    except OSError:
        return error
    if folder.f_flag & os.ST_RDONLY:
        reason = errno.EROFS
    elif not os.access(path.parent, os.W_OK):
        reason = errno.EACCES
    elif folder.f_bavail * folder.f_frsize < LOW_SPACE:
        reason = errno.ENOSPC
    else:
        return error  # the disk is fine: a writer's own failure (a bug) keeps its traceback
    return OSError(reason, os.strerror(reason), str(path))


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    The temporary name keeps the suffix (``.png``, ``.onnx``, ``.npz``), since writers such
    as matplotlib and numpy pick the format from it. Before the rename the file gets the
    umask's normal mode: some writers (safetensors' ``save_file``) create private 0600
    files, and checkpoints and package data must be readable like any file.
    On an error the temporary file is removed and ``path`` is left untouched; a failure of
    the disk (full, read-only, no permission) is raised as an ``OSError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except Exception as error:
        cause = _os_error(error, path)
        if cause is error:
            raise
        raise cause from error
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
