"""Drive the CLI in-process on hostile input and check the house's promises (used by the fuzz tests).

Every command, whatever it is handed, must either succeed (exit 0) or refuse with exit 2 and one
``error: ...`` line; it must write nothing outside its output folder and change no file it read.
`run_hostile` runs one command and asserts all three, so each fuzz test only generates inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import signal
from pathlib import Path

from auformer.cli import main


def snapshot(root: Path, skip: Path | None = None) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (links recorded by target), except below ``skip``."""
    files = {}
    for path in sorted(root.rglob("*")):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        if path.is_symlink():
            files[str(path.relative_to(root))] = f"-> {os.readlink(path)}"
        elif path.is_file():
            files[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


PROCESS_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run_hostile(argv: list[str], root: Path, out: Path, allowed_codes: tuple[int, ...] = (0, 2)) -> tuple[int, str]:
    """Run ``auformer ARGV`` in-process; assert the exit code, one error line, that only ``out`` changed,
    and that the process is left as it was (signal handlers: a command that sets its own puts them back).

    ``root`` holds every input of the run and ``out`` (which may lie inside it); nothing under ``root``
    apart from ``out`` may be created, changed or removed. Returns ``(exit code, stderr)``.
    """
    before = snapshot(root, skip=out)
    handlers = {number: signal.getsignal(number) for number in PROCESS_SIGNALS}
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        code = main([str(arg) for arg in argv])
    text = stderr.getvalue()
    assert code in allowed_codes, f"exit {code} for {argv}: {text[-2000:]}"
    if code == 2:
        errors = [line for line in text.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, f"expected one 'error:' line for {argv}, got: {text[-2000:]}"
        assert "Traceback" not in text, text[-2000:]
    assert snapshot(root, skip=out) == before, f"{argv} changed files outside {out}"
    assert {number: signal.getsignal(number) for number in PROCESS_SIGNALS} == handlers, f"{argv} left signal handlers set"
    return code, text
