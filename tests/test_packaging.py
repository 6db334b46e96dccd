"""Packaging contracts: version from metadata, dependency ranges for users, exact pins for CI, README == CI."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from auformer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_version_comes_from_the_installed_metadata(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"auformer {importlib.metadata.version('auformer')}\n"


def _requirements(project: dict) -> list[Requirement]:
    extras = [req for reqs in project["optional-dependencies"].values() for req in reqs]
    requirements = [Requirement(text) for text in project["dependencies"] + extras]
    return [req for req in requirements if canonicalize_name(req.name) != "auformer"]  # auformer[export] in dev


def test_users_get_ranges_and_ci_gets_exact_pins_of_every_dependency():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    for req in _requirements(project):
        operators = {spec.operator for spec in req.specifier}
        assert ">=" in operators and operators <= {">=", "<"}, f"{req}: pyproject takes ranges, not pins"
        assert canonicalize_name(req.name) in pins, f"{req.name} is missing from constraints.txt"
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"constraints.txt pins {req.name} outside {req}"
    # This machine holds these on disk; any other version downloads gigabytes.
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_ci_runs_the_readme_test_command():
    readme_blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    test_command = readme_blocks[1].strip()  # the README's second command: set up for development and test
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    positions = [next(i for i, line in enumerate(ci_lines) if line.startswith(step)) for step in test_command.split(" && ")]
    assert positions == sorted(positions)
