"""Test sessions per supported Python (``nox -l`` lists them; ``nox -s tests-3.10`` runs one).

Each session builds the wheel, installs it (with the dev extra) into a fresh virtualenv outside the
source tree and runs the tests against the installed package, so a file missing from the wheel fails
here. ``nox -s tests-3.11`` runs the whole suite; the other Pythons run FAST_SUBSET unless
``-- --full`` is given, since each of them downloads its own torch build (about 1 GB on Linux) and the
full suite takes minutes per Python. ``nox -s lint`` runs ruff as ``.ci/run`` does.
"""

from __future__ import annotations

import glob

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
FULL_SUITE_PYTHON = "3.11"  # the version .ci/run tests in full, with constraints.txt
# Import, config, model, checkpoint (hub loading included), CLI and the packaged synthetic ViT.
FAST_SUBSET = [
    "tests/test_aus.py",
    "tests/test_config.py",
    "tests/test_model.py",
    "tests/test_checkpoint.py",
    "tests/test_hub.py",
    "tests/test_info.py",
    "tests/test_backbone_weights.py",
]

nox.options.sessions = ["lint", "tests"]


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    session.install("build")
    session.run("python", "-m", "build", "--wheel", "--outdir", f"{session.create_tmp()}/dist")
    wheel = sorted(glob.glob(f"{session.create_tmp()}/dist/auformer-*.whl"))[-1]
    # constraints.txt pins the CI versions for 3.11; elsewhere the ranges in pyproject.toml decide.
    constraints = ["-c", "constraints.txt"] if session.python == FULL_SUITE_PYTHON else []
    session.install(f"{wheel}[dev]", *constraints)
    full = session.python == FULL_SUITE_PYTHON or "--full" in session.posargs
    args = [arg for arg in session.posargs if arg != "--full"]
    # src/ is never on sys.path (an emptied PYTHONPATH), so the tests import the installed wheel.
    session.run(
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        *(args or ([] if full else FAST_SUBSET)),
        env={"OMP_NUM_THREADS": "1", "PYTHONPATH": ""},
    )


@nox.session(python=FULL_SUITE_PYTHON)
def lint(session: nox.Session) -> None:
    session.install("ruff", "-c", "constraints.txt")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
