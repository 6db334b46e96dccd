"""`auformer.cli.main` tunes Python's garbage collector for a command's life (`fewer_collections`): larger
thresholds while it runs, restored when it returns (or fails), and one ``gc.freeze`` at exit."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from auformer.cli import GC_THRESHOLD, info, main
from auformer.errors import AUFormerError


@pytest.mark.parametrize("outcome", ["returns", "user error", "bug"])
def test_thresholds_hold_while_the_command_runs_and_are_restored(outcome, monkeypatch, capsys):
    seen = []

    def run(args) -> None:
        seen.append(gc.get_threshold())
        if outcome == "user error":
            raise AUFormerError("a user's mistake")
        if outcome == "bug":
            raise ZeroDivisionError("a bug")

    monkeypatch.setattr(info, "run", run)
    before = (123, 4, 5)
    previous = gc.get_threshold()
    gc.set_threshold(*before)
    try:
        if outcome == "bug":
            with pytest.raises(ZeroDivisionError):
                main(["info"])
        else:
            assert main(["info"]) == (2 if outcome == "user error" else 0)
        assert seen == [GC_THRESHOLD]
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*previous)


def test_the_exit_freeze_runs_once_after_the_other_exit_handlers():
    code = """
import atexit, gc
import auformer.cli as cli
gc.freeze = lambda: print("freeze", flush=True)  # what main registers, seen
cli.info.run = lambda args: atexit.register(print, "handler of the command", flush=True)
for _ in range(3):
    cli.main(["info"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == ["handler of the command"] * 3 + ["freeze"]
