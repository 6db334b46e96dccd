"""The project's error type for mistakes in what the user gave us (files, flags, config).

``auformer`` commands print an :class:`AUFormerError` as one ``error: ...`` line and
exit with status 2; any other exception is a bug in auformer (or its libraries) and
keeps its traceback. It subclasses ``ValueError`` so library callers that catch
``ValueError`` keep working.
"""

from __future__ import annotations


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


class BadImageError(AUFormerError):
    """An image file the project's reader (:func:`auformer.data.images.read_rgb`) refuses: not an image, truncated or
    corrupt, over the pixel limit, or of a degenerate size. ``--skip-bad`` counts and lists it; the run goes on.

    The message is ``"PATH: reason"``; ``reason`` alone is the short text a page shows for an upload. (One
    positional argument, so that the error survives pickling and a DataLoader worker's re-raise.)
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message
