"""System programs some tests drive (Chromium, tmux): Debian packages that `.ci/install-browser` installs.

On a contributor's machine a missing one skips its test with the line saying how to get it; on CI
(``CI=true``) it fails instead, so that CI never passes by skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require(*programs: str, why: str, module: bool = False) -> None:
    """Skip (or, under CI=true, fail) unless every one of ``programs`` is on PATH."""
    missing = [name for name in programs if shutil.which(name) is None]
    if not missing:
        return
    text = f"{', '.join(missing)} not on PATH ({why}): run .ci/install-browser"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true: {text}", pytrace=False)
    pytest.skip(text, allow_module_level=module)
