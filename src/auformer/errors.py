"""The project's error type for mistakes in what the user gave us (files, flags, config).

``auformer`` commands print an :class:`AUFormerError` as one ``error: ...`` line and
exit with status 2; so is an ``OSError`` that comes from the user's environment
(`environment_problem`: no permission, a read-only or full disk, a file where a folder
is expected). Any other exception is a bug in auformer (or its libraries) and keeps its
traceback. It subclasses ``ValueError`` so library callers that catch ``ValueError`` keep
working.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

# OS errors that describe the user's files, folders and disks, not auformer's logic.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.EACCES, errno.EPERM, errno.EROFS,  # no permission; a read-only file system
        errno.ENOSPC, errno.EDQUOT, errno.EFBIG,  # the disk (or the user's quota) is full; file too large
        errno.ENOENT, errno.EEXIST, errno.ENOTDIR, errno.EISDIR,  # missing; a file where a folder is expected ...
        errno.ENAMETOOLONG, errno.ELOOP, errno.EIO, errno.ENXIO, errno.ENODEV, errno.ETXTBSY, errno.EBUSY,
    }
)  # fmt: skip
# The same, raised without an errno (a DataLoader worker re-raises its error by class and message only).
ENVIRONMENT_CLASSES = (PermissionError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


class AUFormerError(ValueError):
    """A user error: a bad input file (named, with its line where there is one), flag or config value."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` on one line.

    A DataLoader worker re-raises its error with the worker's traceback in the message;
    the last line (``auformer.errors.AUFormerError: <message>``) is what the user needs.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > 1 and "Original Traceback" in str(error):
        return lines[-1].split(": ", 1)[-1]
    return " ".join(line.strip() for line in lines)


def environment_problem(error: OSError) -> str | None:
    """One line for an ``OSError`` caused by the user's environment, naming the path and the OS's reason;
    ``None`` when the error is not one of those (a bug, which keeps its traceback).

    The one place that decides which OS errors are the user's: by ``errno`` (`ENVIRONMENT_ERRNOS`).
    """
    if error.errno is None:
        return one_line(error) if isinstance(error, ENVIRONMENT_CLASSES) else None
    if error.errno not in ENVIRONMENT_ERRNOS:
        return None
    reason = error.strerror or os.strerror(error.errno)
    if error.filename is None:
        return reason
    path = os.fsdecode(error.filename)
    where = f"{path} -> {os.fsdecode(error.filename2)}" if error.filename2 is not None else path
    file = _file_in_the_way(Path(path)) if error.errno in (errno.EEXIST, errno.ENOTDIR) else None
    hint = f" ({file} is a file, not a folder)" if file is not None else ""
    return f"{where}: {reason}{hint}"


def _file_in_the_way(path: Path) -> Path | None:
    """The file among ``path`` and its parents that stands where a folder is needed, if any."""
    for candidate in (path, *path.parents):
        if candidate.is_file():
            return candidate
    return None


class BadImageError(AUFormerError):
    """An image file the project's reader (:func:`auformer.data.images.read_rgb`) refuses: not an image, truncated or
    corrupt, over the pixel limit, or of a degenerate size. ``--skip-bad`` counts and lists it; the run goes on.

    The message is ``"PATH: reason"``; ``reason`` alone is the short text a page shows for an upload. (One
    positional argument, so that the error survives pickling and a DataLoader worker's re-raise.)
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
