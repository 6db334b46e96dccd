"""`auformer detect` never silently replaces earlier results, and `--resume` continues only the run it can continue.

The reported bug: a second `detect` into the same `--out` replaced the first CSV, and `detect --resume` with
another `--format` or another checkpoint's AU list appended rows in a different layout under the old header,
exit 0. OUT/detect.json now records what wrote the CSVs (the checkpoint files' sha256, format, columns).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file
from skimage import data

from auformer.detect.sources import check_name
from auformer.detect.writers import CsvWriter, completed_frames
from auformer.errors import AUFormerError
from hostile import run_hostile, snapshot
from media import tiny_checkpoint, write_video


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
        # settings that change the rows' values (before: accepted, and AU01_c of one run's rows above the other's)
        (["--threshold", "0.9"], "--resume with another threshold than the run there"),
        (["--every", "2", "--detect-every", "1"], "--resume with another detect_every, every than the run there"),
        ("other", "--resume with checkpoint"),  # another AU list
        ("retrained", "other sha256)"),  # same AUs, other weights
        ("header", "images.csv: its header is not the one this run writes"),
        ("no-summary", "--resume needs detect.json"),
    ],
)
def test_resume_refuses_a_run_it_cannot_continue(setup, tmp_path, change, match):
    root, photos, checkpoint, other = setup
    out = root / f"out-{change if isinstance(change, str) else change[0].strip('-')}"
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


def test_resume_continues_a_photo_whose_name_holds_a_newline(setup, tmp_path):
    """A newline in a file name is one quoted CSV cell over two lines; `--resume` read the CSV line by line
    and refused its own table (``images.csv: line 3 is not a row this command wrote``)."""
    root, photos, checkpoint, _ = setup
    odd = root / "odd"
    odd.mkdir()
    for name in ("a.png", "new\nline.png", 'quo"te,=1+1.png'):
        (odd / name).write_bytes((photos / "p0.png").read_bytes())
    out = root / "out-newline"
    assert run_hostile(_detect(odd, checkpoint, out), root, out)[0] == 0
    first = (out / "images.csv").read_bytes()
    assert run_hostile(_detect(odd, checkpoint, out, "--resume"), root, out)[0] == 0
    assert (out / "images.csv").read_bytes() == first
    (out / "images.csv").write_bytes(first[: first.index(b"line.png")])  # killed inside the quoted name
    assert run_hostile(_detect(odd, checkpoint, out, "--resume"), root, out)[0] == 0
    assert (out / "images.csv").read_bytes() == first


@pytest.mark.parametrize(
    "name, message",
    [(b"lat\xe9.png", "lat\\udce9.png: file name is not UTF-8"), (b"cr\r.png", "file name holds a carriage return")],
)
def test_names_the_tables_cannot_hold_stop_before_any_work(setup, name, message):
    """Before: a Latin-1 name was a UnicodeEncodeError traceback in the middle of the run, a carriage return
    a row every CSV reader splits in two."""
    root, photos, checkpoint, _ = setup
    odd = root / f"odd-{name.hex()}"
    odd.mkdir()
    (odd / "a.png").write_bytes((photos / "p0.png").read_bytes())
    Path(os.fsdecode(bytes(odd) + b"/" + name)).write_bytes((photos / "p0.png").read_bytes())
    out = root / f"out-{name.hex()}"
    for extra in ([], ["--skip-bad"]):
        code, stderr = run_hostile(_detect(odd, checkpoint, out, *extra), root, out)
        assert code == 2 and message in stderr and not out.exists(), stderr


NAMES = st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=8)  # lone surrogates too: names not UTF-8


def _accepted(name: str) -> bool:
    try:
        check_name(Path(name))
    except AUFormerError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(st.tuples(NAMES, st.integers(1, 3)), min_size=1, max_size=6),  # (input, faces) of each frame
    cut=st.floats(0, 1),
    openface=st.booleans(),
)
@example(frames=[("a\nb", 1), ("a\nb", 2)], cut=0.8, openface=False)
@example(frames=[("=cmd|' /C calc'!A0", 1), ('"q",\n', 2)], cut=0.6, openface=True)
def test_completed_frames_keeps_whole_frames_of_any_file_name(frames, cut, openface):
    """Whatever the input names (newlines, quotes, commas, any Unicode), a CSV cut at any byte is cut back to
    its whole frames but the last one seen, and `completed_frames` names the last of them for each input.
    The names `check_name` refuses before any work (not UTF-8, a carriage return) are the ones this fails for."""
    assume(all(_accepted(name) for name, _ in frames))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "t.csv"
        writer, ends = CsvWriter(path, openface), []  # ends: byte offset after each frame
        for number, (name, faces) in enumerate(frames):
            rows = [{"input": name, "frame": number, "face": face, "time_s": 0.0, "face_score": 1.0} for face in range(faces)]
            writer.write(pd.DataFrame(rows))
            ends.append(path.stat().st_size)
        full = path.read_bytes()
        header = len(full.split(b"\n", 1)[0]) + 1
        size = round(cut * len(full))
        path.write_bytes(full[:size])
        # frames with at least one whole row in the cut file; every one but the last of them is kept
        starts = [header, *ends[:-1]]
        seen = sum(1 for start in starts if _first_row_end(full, start) <= size)
        kept = max(seen - 1, 0)
        done = completed_frames(path, openface)
        assert done == {name: number for number, (name, _) in list(enumerate(frames))[:kept]}
        assert path.read_bytes() == (full[: starts[kept]] if size >= header else full[:size])


def _first_row_end(full: bytes, start: int) -> int:
    """The byte offset after the first whole CSV row starting at ``start`` (past the end if there is none)."""
    quoted = False
    for end in range(start, len(full)):
        if full[end] == ord('"'):
            quoted = not quoted
        elif full[end] == ord("\n") and not quoted:
            return end + 1
    return len(full) + 1


def test_an_empty_video_is_a_bad_input_and_every_csv_a_run_names_exists(setup):
    """Before: a video without a frame wrote nothing, yet `detect` printed ``wrote OUT/zero.csv`` and listed it in
    detect.json (so did a run whose photos were all skipped, for images.csv), and in a corpus run it got a done
    marker without a CSV, which made ``detect --merge`` fail for the whole corpus."""
    root, _, checkpoint, _ = setup
    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "ok.avi", [data.astronaut()[:128, :128]] * 4)
    cv2.VideoWriter(str(videos / "zero.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 128)).release()
    (videos / "list.txt").write_text("ok.avi\nzero.avi\n")
    out = root / "out-videos"
    code, stderr = run_hostile(_detect(videos, checkpoint, out), root, out)
    assert code == 2 and "zero.avi: no frames (an empty video)" in stderr, stderr
    for argv in (_detect(videos, checkpoint, out, "--skip-bad", "--start", "5", "--overwrite"),  # ok.avi lasts 0.4 s
                 ["detect", "--list", videos / "list.txt", *_detect("", checkpoint, out)[2:], "--skip-bad", "--overwrite"]):  # fmt: skip
        assert run_hostile([arg for arg in argv if arg != ""], root, out)[0] == 0
        summary = json.loads((out / "detect.json").read_text())
        assert [line.split(": ")[1] for line in summary["skipped"]] == ["no frames (an empty video)"]
    assert sorted(path.name for path in (out / "csv").iterdir()) == ["0000000_ok.csv"]
    assert run_hostile(["detect", "--merge", out], root, out)[0] == 0
    assert pd.read_parquet(out / "detect.parquet")["frame"].tolist() == [0, 1, 2, 3]
