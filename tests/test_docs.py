"""The docs match the code: --help defaults, every `auformer ...` line of README.md and docs/, README's Python.

A newcomer reads the docs first. Three kinds of drift are caught here: a default written
into a --help text that is not the default the code uses; a command line in the docs that
the parser refuses (a renamed or removed flag); a README snippet that no longer runs.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from skimage import data

from auformer.cli import build_parser
from auformer.config import Config
from auformer.engine.pretrain import PretrainConfig
from media import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Commands whose unset flags take a config's defaults (the flag's dest is the field's name).
FLAG_CONFIGS = {"pretrain-synthetic": PretrainConfig()}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    return dict(sub.choices)


def help_default_drift(commands: dict[str, argparse.ArgumentParser]) -> list[str]:
    """Each ``(default: X)`` of a --help text that differs from the flag's default or its config's, and each
    ``data.fold``-like config key a help text names that `Config` does not have."""
    problems = []
    config = Config()
    sections = {
        field.name: {f.name for f in dataclasses.fields(getattr(config, field.name))}
        for field in dataclasses.fields(config)
        if dataclasses.is_dataclass(getattr(config, field.name))
    }
    for name, parser in commands.items():
        for action in parser._actions:
            text = parser._get_formatter()._expand_help(action) if action.help else ""  # %(default)s filled in
            for section, key in re.findall(r"\b(data|model|train|loss)\.(\w+)", text):
                if key not in sections[section]:
                    problems.append(f"{name} {action.dest}: names {section}.{key}, which the config lacks")
            written = re.search(r"\(default: ([^)]*)\)", text)
            if written is None:
                continue
            default = action.default
            if default is None and name in FLAG_CONFIGS:
                default = getattr(FLAG_CONFIGS[name], action.dest, None)
            if default is not None and not isinstance(default, bool) and written[1] != str(default):
                problems.append(f"{name} {action.option_strings[0]}: --help says default {written[1]}, the code {default}")
    return problems


def doc_command_lines() -> list[tuple[str, str]]:
    """(file, line) for each `auformer ...` line inside a code block of README.md and docs/*.md
    (a ```text block is a program's output, not commands)."""
    found = []
    for path in DOCS:
        for language, block in re.findall(r"```([a-z]*)\n(.*?)```", path.read_text(), re.S):
            if language == "text":
                continue
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip().removeprefix("$ ")
                if re.match(r"^(\w+=\S+ )*auformer ", line):
                    found.append((path.name, line))
    return found


def parse_problem(line: str) -> str | None:
    """None when the parser accepts ``line`` (a synopsis' ``[--flag X]`` and ``a|b`` read as one choice,
    its placeholders ``K``, ``N``, ``OUT_DIR`` as 1)."""
    words = shlex.split(line.replace("[", "").replace("]", ""), comments=True)
    words = [re.sub(r"^[A-Z][A-Z0-9_]*$", "1", word.split("|")[0]) for word in words if word != "..."]
    while not words[0] == "auformer":  # VAR=value prefixes
        words.pop(0)
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(words[1:])
    except SystemExit as stop:
        if stop.code:
            return errors.getvalue().strip().splitlines()[-1]
    return None


def test_help_defaults_match_the_code():
    assert help_default_drift(subcommands()) == []


def test_help_default_drift_is_caught():
    """A planted drift: pretrain-synthetic --help saying 4 epochs while PretrainConfig trains 16."""
    commands = subcommands()
    (epochs,) = [action for action in commands["pretrain-synthetic"]._actions if action.dest == "epochs"]
    epochs.help = "passes over the faces (default: 4)"
    assert help_default_drift(commands) == ["pretrain-synthetic --epochs: --help says default 4, the code 16"]


def test_every_command_line_in_the_docs_parses():
    lines = doc_command_lines()
    assert len(lines) > 30  # the search itself works
    problems = [f"{name}: {line}: {problem}" for name, line in lines if (problem := parse_problem(line))]
    assert problems == []


def test_a_removed_flag_in_the_docs_is_caught():
    assert "unrecognized arguments: --epochs-per-fold" in parse_problem("auformer cv --epochs-per-fold 3")


@pytest.fixture
def readme_folder(tmp_path, monkeypatch) -> Path:
    """What README's snippets name: runs/bp4d/best, photo.jpg, weights.safetensors, a batch of images."""
    monkeypatch.chdir(tmp_path)
    tiny_checkpoint(tmp_path / "runs" / "bp4d" / "best", [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24])
    Image.fromarray(data.astronaut()).save(tmp_path / "photo.jpg")
    vit = timm.create_model("vit_base_patch16_224.augreg_in1k", pretrained=False, num_classes=0)
    save_file(vit.state_dict(), tmp_path / "weights.safetensors")
    return tmp_path


def test_readme_python_snippets_run(readme_folder):
    from auformer.cli import main

    snippets = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert len(snippets) >= 3
    assert main(["export", "runs/bp4d/best", "--out", "export"]) == 0  # what the ONNX snippet runs
    namespace = {"images": torch.zeros(2, 3, 224, 224), "np": np}
    for snippet in snippets:
        exec(compile(snippet, "README.md", "exec"), namespace)  # noqa: S102 - the project's own README


def test_the_aus_each_preset_outputs_are_the_presets_own():
    from auformer.aus import au_columns
    from auformer.config import load_config, preset_names
    from auformer.data.synthetic_appearance import SYNTHETIC_AUS

    documented = dict(re.findall(r"^\| `([\w-]+)` \| [^|]+ \| ([^|]+) \|$", (ROOT / "docs" / "training.md").read_text(), re.M))
    for name in preset_names():
        config = load_config(name, data_dir="x")
        if config.data.aus is None and name != "synthetic":  # the prepared folder's own AUs (ckplus)
            assert documented.get(name, "").startswith("those `auformer prepare"), name
            continue
        assert documented.get(name) == ", ".join(au_columns(config.data.aus or SYNTHETIC_AUS)), name
