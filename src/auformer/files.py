"""Where auformer reads and writes: atomic writes, paths kept inside their folders, output names kept apart.

- Atomic writes: every file auformer writes goes through a temporary file and a rename. A
  process killed mid-write (SIGKILL, out of memory, a cluster pre-empting the job) then
  leaves the old file or the new one, never half a file. Checkpoints, tables, plots,
  exports and datasets use it.
- :func:`resolve_inside`: every path read from a user's file (a label CSV, a manifest, a
  list file) goes through it, so no row can reach outside the folder it is relative to.
- :class:`UniqueNames`: two inputs that would map to one output file get distinct names.
- :func:`check_apart`: an output folder never is, holds, or (where not allowed) lies
  inside an input, so nothing a command reads is overwritten by what it writes.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

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


def earlier_outputs(paths: Iterable[Path | None]) -> list[Path]:
    """The paths among ``paths`` (None skipped) that already exist, a link counted even when it dangles:
    what a command that never silently replaces earlier results must refuse (or, asked to, remove)."""
    return [path for path in paths if path is not None and (path.exists() or path.is_symlink())]


def resolve(path: str | os.PathLike) -> Path:
    """``Path(path).resolve()``, with a link loop raised as the ``OSError`` (ELOOP) naming ``path`` that it is.

    Python before 3.13 raises ``RuntimeError("Symlink loop ...")`` there, which the CLI takes for a bug
    (a traceback); an ``OSError`` is the one line of `auformer.errors.environment_problem`, or a bad row.
    """
    try:
        return Path(path).resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None


def resolve_inside(root: str | os.PathLike, relative: str, source: str) -> Path:
    """The absolute path of ``relative`` under ``root``, links followed; a bad row when it leads out of ``root``.

    ``source`` names where the path was read (``labels.csv line 4``). An absolute path, a
    ``..`` that climbs out, or a symbolic link inside ``root`` that points out of it would
    let one row of a user's file read (or, through a name derived from it, write) any
    file: each raises an :class:`AUFormerError` naming ``source``, as does a path naming ``root``
    itself (``.``), which is no file. ``root`` itself may be a link.
    """
    base = resolve(root)
    try:
        if not relative or Path(relative).is_absolute():
            raise ValueError
        path = resolve(base / relative)
    except (ValueError, OSError):  # absolute, empty, a NUL byte, a link loop
        path = None
    if path is None or path == base or not path.is_relative_to(base):
        raise AUFormerError(f"{source}: path {relative!r} is not inside {root} (absolute, '..' out of it, or a link out of it)")
    return path


class UniqueNames:
    """Output names that never collide: ``claim("images/x.jpg")`` is ``images/x.jpg``, then ``images/x_2.jpg``, ...

    Two inputs can map to one output (``dup.png`` and ``dup.jpg`` both to ``images/dup.jpg``;
    ``a/x.png`` and ``b/x.png`` both to ``plots/x_face0.png``); the later one gets the next
    free number. Names are normalised (``a/../b.jpg`` is ``b.jpg``) and compared case-insensitively,
    as macOS and Windows file systems do.
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._taken = {name.lower() for name in reserved}

    def claim(self, name: str) -> str:
        """``name``, or ``STEM_K.SUFFIX`` with the smallest K >= 2 not claimed yet; the result is claimed."""
        name = posixpath.normpath(name)
        path = PurePosixPath(name)
        candidate, number = name, 1
        while candidate.lower() in self._taken:
            number += 1
            candidate = str(path.with_name(f"{path.stem}_{number}{path.suffix}"))
        self._taken.add(candidate.lower())
        return candidate


def check_apart(out: str | os.PathLike, inputs: Iterable[str | os.PathLike], inside_ok: bool = False) -> None:
    """Refuse (one line) an output folder that is an input, holds one, or lies inside an input folder.

    Any of these lets a command overwrite what it reads, or read back what it wrote on
    the next run. ``inside_ok``: OUT may lie inside an input folder (the caller then
    leaves OUT out of its search, as ``detect`` does for ``detect . --out results``).
    """
    target = resolve(out)
    for item in inputs:
        source = resolve(item)
        if target == source or source.is_relative_to(target):
            raise AUFormerError(
                f"output folder {out} is or holds the input {item}: choose an output folder apart from the inputs"
            )
        if target.is_relative_to(source) and not inside_ok:
            raise AUFormerError(f"output folder {out} lies inside the input folder {item}: choose one outside it")
