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
