"""`auformer detect` never silently replaces earlier results, and `--resume` continues only the run it can continue.

The reported bug: a second `detect` into the same `--out` replaced the first CSV, and `detect --resume` with
another `--format` or another checkpoint's AU list appended rows in a different layout under the old header,
exit 0. OUT/detect.json now records what wrote the CSVs (the checkpoint files' sha256, format, columns).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from skimage import data

from hostile import run_hostile, snapshot
from media import tiny_checkpoint


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, Path, Path]:
    """(root, photos, checkpoint with AUs 1 2, checkpoint with AUs 1 2 4) under one root."""
    root = tmp_path_factory.mktemp("detect_outputs")
    for index in range(3):
        (root / "photos").mkdir(exist_ok=True)
        Image.fromarray(np.roll(data.astronaut(), 50 * index, axis=1)[:128, :128]).save(root / "photos" / f"p{index}.png")
    return root, root / "photos", tiny_checkpoint(root / "a" / "tiny", [1, 2]), tiny_checkpoint(root / "b" / "tiny", [1, 2, 4])


def _detect(photos: Path, checkpoint: Path, out: Path, *extra) -> list:
    return ["detect", photos, "--checkpoint", checkpoint, "--out", out, "--face-detector", "none", *extra]


def _refused(argv: list, root: Path, out: Path, match: str) -> None:
    """Exit 2 with one line containing ``match``, and OUT exactly as before."""
    before = snapshot(out)
    code, stderr = run_hostile(argv, root, out)
    assert code == 2 and match in stderr, stderr
    assert snapshot(out) == before


def test_results_are_never_silently_replaced(setup, tmp_path):
    root, photos, checkpoint, other = setup
    out = root / "out1"
    assert run_hostile(_detect(photos, checkpoint, out), root, out)[0] == 0
    summary = json.loads((out / "detect.json").read_text())
    assert summary["finished"] and summary["format"] == "auformer" and summary["csv"] == ["images.csv"]
    assert set(summary["checkpoint_sha256"]) == {"tiny.safetensors", "tiny.json"}
    _refused(_detect(photos, checkpoint, out), root, out, f"{out} already holds results (detect.json, images.csv)")

    (out / "stale.csv").write_text("input,frame\n")  # as if an earlier run had listed it
    summary["csv"].append("stale.csv")
    (out / "detect.json").write_text(json.dumps(summary))
    assert run_hostile(_detect(photos, other, out, "--overwrite", "--format", "openface"), root, out)[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["detect.json", "images.csv"]  # stale.csv went too
    assert (out / "images.csv").read_text().splitlines()[0].endswith("AU01,AU02,AU04")  # openface order, other AUs


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (["--format", "openface"], "--resume with --format openface, but the run there wrote --format auformer"),
        ("other", "--resume with checkpoint"),  # another AU list
        ("retrained", "other sha256)"),  # same AUs, other weights
        ("header", "images.csv: its header is not the one this run writes"),
        ("no-summary", "--resume needs detect.json"),
    ],
)
def test_resume_refuses_a_run_it_cannot_continue(setup, tmp_path, change, match):
    root, photos, checkpoint, other = setup
    out = root / f"out-{change if isinstance(change, str) else 'format'}"
    assert run_hostile(_detect(photos, checkpoint, out), root, out)[0] == 0
    if change == "header":
        text = (out / "images.csv").read_text()
        (out / "images.csv").write_text(text.replace("AU02", "AU25", 1))
    if change == "no-summary":
        (out / "detect.json").unlink()
    resumed = other if change == "other" else checkpoint
    if change == "retrained":  # same AUs, other numbers
        resumed = tiny_checkpoint(root / "retrained" / "tiny", [1, 2])
        weights = load_file(resumed.with_suffix(".safetensors"))
        save_file({name: value + 1 for name, value in weights.items()}, resumed.with_suffix(".safetensors"))
    _refused(_detect(photos, resumed, out, "--resume", *(change if isinstance(change, list) else [])), root, out, match)


def test_resume_of_the_same_run_goes_on_and_a_hostile_summary_reaches_nothing(setup):
    root, photos, checkpoint, _ = setup
    out = root / "out-same"
    assert run_hostile(_detect(photos, checkpoint, out), root, out)[0] == 0
    first = pd.read_csv(out / "images.csv")
    assert run_hostile(_detect(photos, checkpoint, out, "--resume"), root, out)[0] == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "images.csv"), first, atol=1e-5)  # the last photo redone, once

    (root / "victim.csv").write_text("keep me\n")
    summary = json.loads((out / "detect.json").read_text())
    (out / "detect.json").write_text(json.dumps({**summary, "csv": ["../victim.csv"]}))
    _refused(_detect(photos, checkpoint, out, "--overwrite"), root, out, "path '../victim.csv' is not inside")
