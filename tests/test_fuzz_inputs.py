"""Property-based tests (hypothesis) of what users hand the CLI: pathological images and hostile paths.

Each example writes a small tree (photos, a label file or manifest, files outside the input folder),
runs one command in-process through `hostile.run_hostile` and checks the house's promises: exit 0,
or exit 2 with one ``error:`` line; nothing written outside OUT; no input changed. On top of that,
with ``--skip-bad`` the run must finish (exit 0) and account for every input: each image is either
in the results or in the skipped list, and every label row is written or reported.

The images: a PNG header claiming 5000-100000 pixels a side (a decompression bomb), tiny (1-12 px),
1xN strips, truncated and bit-flipped files of every format, animated GIF/APNG/WebP, CMYK, 16-bit,
palette (with transparency), LA, zero bytes, and bytes that are no image, under matching or wrong
suffixes; for detect also videos: fine, without a frame, truncated, zero bytes, junk. The paths:
``..`` out of the root, absolute paths, links out of the root, a link to itself, a newline in a name,
two spellings of one file, two files with one stem (``x.png``, ``x.jpg``), the root itself, missing
files.

Settings are small (25 examples a test) so that the file runs in about a minute on two busy cores;
``AUFORMER_FUZZ_EXAMPLES=200`` searches deeper. ``pytest --hypothesis-show-statistics`` prints how
many cases each test generated, the kinds of image and the outcomes.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, Phase, assume, event, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from skimage import data

from auformer.data.manifest import read_manifest, write_folds
from hostile import run_hostile, snapshot
from media import png_claiming, tiny_checkpoint, write_video

EXAMPLES = int(os.environ.get("AUFORMER_FUZZ_EXAMPLES", "25"))  # per test (evaluate: half); more for a deeper search
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],  # no "explain": minutes per failure here
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "webp": "WEBP", "tif": "TIFF", "bmp": "BMP"}
# A small real face: the one input every run must analyse whatever else it is handed.
GOOD = Image.fromarray(data.astronaut()[20:276, 100:356]).resize((128, 128))


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, FORMATS[fmt], **options)
    return buffer.getvalue()


def _noise(draw, width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)  # (H, W, 3)
    return Image.fromarray(pixels).convert(mode)


@st.composite
def pathological_images(draw) -> tuple[str, bytes]:
    """``(suffix, file content)`` of one pathological image; the kind is recorded as a hypothesis event."""
    kind = draw(
        st.sampled_from(
            [
                "bomb",
                "tiny",
                "strip",
                "truncated",
                "flipped",
                "animated",
                "cmyk",
                "grey16",
                "palette",
                "la",
                "empty",
                "junk",
                "fine",
            ]
        )
    )
    event(f"image: {kind}")
    side = st.integers(8, 96)
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    if kind == "bomb":
        big = st.integers(5_000, 100_000)  # hypothesis favours small numbers: a bomb's sides are drawn large
        content, fmt = png_claiming(draw(big), draw(big)), "png"
    elif kind == "tiny":
        content = _encode(_noise(draw, draw(st.integers(1, 12)), draw(st.integers(1, 12))), fmt)
    elif kind == "strip":
        short, long = draw(st.integers(1, 30)), draw(st.integers(200, 3000))
        size = (long, short) if draw(st.booleans()) else (short, long)
        content = _encode(_noise(draw, *size), fmt)
    elif kind in ("truncated", "flipped"):
        content = _encode(_noise(draw, draw(side), draw(side)), fmt)
        if kind == "truncated":
            content = content[: draw(st.integers(0, len(content) - 1))]
        else:
            flipped = bytearray(content)
            for position in draw(st.lists(st.integers(0, len(content) - 1), min_size=1, max_size=8)):
                flipped[position] ^= 0xFF
            content = bytes(flipped)
    elif kind == "animated":
        fmt = draw(st.sampled_from(["gif", "png", "webp"]))
        width, height = draw(side), draw(side)
        frames = [_noise(draw, width, height) for _ in range(draw(st.integers(2, 4)))]
        content = _encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    elif kind == "cmyk":
        fmt = draw(st.sampled_from(["jpg", "tif"]))
        content = _encode(_noise(draw, draw(side), draw(side), "CMYK"), fmt)
    elif kind == "grey16":
        fmt = draw(st.sampled_from(["png", "tif"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        content = _encode(Image.fromarray(rng.integers(0, 2**16, (draw(side), draw(side)), dtype=np.uint16)), fmt)
    elif kind == "palette":
        fmt = draw(st.sampled_from(["png", "gif"]))
        image = _noise(draw, draw(side), draw(side)).convert("P")
        content = _encode(image, fmt, transparency=draw(st.integers(0, 255)))
    elif kind == "la":
        fmt = "png"
        content = _encode(_noise(draw, draw(side), draw(side), "LA"), fmt)
    elif kind == "empty":
        content = b""
    elif kind == "junk":
        content = draw(st.binary(min_size=1, max_size=64))
    else:
        content = _encode(_noise(draw, draw(side), draw(side)), fmt)
    if draw(st.integers(0, 4)) == 0:  # now and then under another format's suffix
        fmt = draw(st.sampled_from(sorted(FORMATS)))
    return fmt, content


def _video_bytes(frames: int) -> bytes:
    """A 10 fps MJPEG AVI of ``frames`` copies of the good face (0: a container without a frame)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "v.avi"
        if frames:
            return write_video(path, [np.asarray(GOOD)] * frames).read_bytes()
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, GOOD.size)
        writer.release()
        return path.read_bytes()


VIDEO, EMPTY_VIDEO = _video_bytes(4), _video_bytes(0)


@st.composite
def pathological_videos(draw) -> tuple[str, bytes]:
    """``(suffix, file content)`` of one video: fine, without a frame, truncated, zero bytes or junk."""
    kind = draw(st.sampled_from(["fine", "no frames", "truncated", "empty", "junk"]))
    event(f"video: {kind}")
    content = {"fine": VIDEO, "no frames": EMPTY_VIDEO, "empty": b""}.get(kind)
    if kind == "truncated":
        content = VIDEO[: draw(st.integers(0, len(VIDEO) - 1))]
    elif kind == "junk":
        content = draw(st.binary(min_size=1, max_size=64))
    return draw(st.sampled_from(["avi", "mp4"])), content


def _write_images(folder: Path, images: list[tuple[str, bytes]]) -> list[Path]:
    """The generated images as folder/bad<k>.<suffix>, plus folder/good.png; all their paths, good last."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (suffix, content) in enumerate(images):
        paths.append(folder / f"bad{index}.{suffix}")
        paths[-1].write_bytes(content)
    GOOD.save(folder / "good.png")
    return [*paths, folder / "good.png"]


def _outside(root: Path) -> Path:
    """A photo beside the input folder that no row may read (and no write may touch)."""
    GOOD.save(root / "outside.png")
    return root / "outside.png"


# Label/manifest paths that must never reach outside the input folder, or two that name one output.
HOSTILE_PATHS = st.sampled_from(["../outside.png", "{abs}", "link_out.png", "sub/../good.png", "good.png", "x.png", "x.jpg",
                                 "sub/x.png", "X.png", ".", "sub/", "gone.png", "sub/../../outside.png", "good.png/..", "loop.png",
                                 "new\nline.png"])  # fmt: skip


def _hostile_tree(input_dir: Path, outside: Path) -> None:
    """Files the hostile paths name: a link out of the folder, a link to itself, two photos with one stem, one in
    a sub-folder, one with a newline in its name."""
    (input_dir / "sub").mkdir(parents=True, exist_ok=True)
    (input_dir / "link_out.png").symlink_to(outside)
    (input_dir / "loop.png").symlink_to("loop.png")  # before: a RuntimeError traceback wherever it was resolved
    GOOD.save(input_dir / "new\nline.png")
    for name, shift in (("x.png", 30), ("x.jpg", 60), ("sub/x.png", 90), ("X.png", 120)):
        Image.fromarray(np.roll(np.asarray(GOOD), shift, axis=1)).save(input_dir / name)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", [1, 2])


@FUZZ
@given(
    images=st.lists(pathological_images(), min_size=1, max_size=3),
    videos=st.lists(pathological_videos(), max_size=2),
    face_detector=st.sampled_from(["none", "yunet", "dlib"]),
    skip_bad=st.booleans(),
)
def test_detect_on_pathological_images(checkpoint, images, videos, face_detector, skip_bad):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = _write_images(root / "in", images)
        clips = [root / "in" / f"clip{index}.{suffix}" for index, (suffix, _) in enumerate(videos)]
        for clip, (_, content) in zip(clips, videos):
            clip.write_bytes(content)
        argv = ["detect", root / "in", "--checkpoint", checkpoint, "--out", root / "out", "--face-detector", face_detector]
        code, _ = run_hostile([*argv, *(["--skip-bad"] if skip_bad else [])], root, root / "out")
        event(f"detect exit {code}")
        if not skip_bad:
            return
        assert code == 0  # one bad file never ends a run that was asked to skip
        summary = json.loads((root / "out" / "detect.json").read_text())
        tables = {name: pd.read_csv(root / "out" / name) for name in summary["csv"]}  # every CSV it names exists
        analysed, clip_names = set(tables["images.csv"]["input"]), {str(clip) for clip in clips}
        skipped = {line.split(": ")[0] for line in summary["skipped"]}
        assert str(root / "in" / "good.png") in analysed
        assert analysed | (skipped - clip_names) == {str(path) for path in paths} and not analysed & skipped  # each photo once
        in_videos = {name for table in tables.values() for name in table["input"]} - analysed
        assert in_videos | (skipped & clip_names) == clip_names  # every video (a cut one: its frames, and skipped)


@FUZZ
@given(
    paths=st.lists(HOSTILE_PATHS, min_size=1, max_size=5),
    as_csv=st.booleans(),
    skip_bad=st.booleans(),
    out_at=st.sampled_from(["out", "in", "in/sub", "in/new"]),  # apart; the list's folder; one holding entries; inside
    overwrite=st.booleans(),
)
def test_detect_list_on_hostile_paths(checkpoint, paths, as_csv, skip_bad, out_at, overwrite):
    """A `--list` of hostile entries: one line naming the entry, or every listed input analysed; no file of the
    list's folder changed or removed, whatever OUT is (``--overwrite`` clears OUT's ``csv/``); then a ``--resume``
    of a finished run changes nothing (a newline in a name is one quoted CSV cell)."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        input_dir, out = root / "in", root / out_at
        _write_images(input_dir, [])
        _hostile_tree(input_dir, _outside(root))
        entries = [path.replace("{abs}", str(root / "outside.png")) for path in paths]
        if out_at == "in/sub":
            (out / "csv").mkdir()  # as if an earlier run had written there
            (out / "csv" / "x.png").write_bytes((out / "x.png").read_bytes())
            entries.append("sub/csv/x.png")
        if as_csv:
            pd.DataFrame({"path": entries}).to_csv(input_dir / "list.csv", index=False)
        else:
            assume(not any("\n" in entry for entry in entries))  # one path a line: a newline cannot be listed
            (input_dir / "list.csv").write_text("".join(f"{entry}\n" for entry in entries))
        list_file = input_dir / ("list.csv" if as_csv else "list.txt")
        (input_dir / "list.csv").rename(list_file)
        inputs = snapshot(input_dir)
        argv = ["detect", "--list", list_file, "--checkpoint", checkpoint, "--out", out, "--face-detector", "none"]
        argv += ["--skip-bad"] if skip_bad else []
        code, _ = run_hostile([*argv, *(["--overwrite"] if overwrite else [])], root, out)
        event(f"detect --list, out {out_at}: exit {code}")
        assert inputs.items() <= snapshot(input_dir).items()  # OUT's writes and clearing reach no input
        if code == 0:
            csvs = {path: path.read_bytes() for path in (out / "csv").iterdir()}
            assert run_hostile([*argv, "--resume"], root, out)[0] == 0
            assert {path: path.read_bytes() for path in (out / "csv").iterdir()} == csvs


@FUZZ
@given(
    images=st.lists(pathological_images(), min_size=1, max_size=3),
    paths=st.lists(HOSTILE_PATHS, max_size=5),
    align=st.sampled_from(["none", "auto"]),
)
def test_prepare_folder_on_pathological_images_and_hostile_paths(images, paths, align):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        input_dir = root / "in"
        files = [path.relative_to(input_dir).as_posix() for path in _write_images(input_dir, images)]
        outside = _outside(root)
        _hostile_tree(input_dir, outside)
        rows = files + [path.replace("{abs}", str(outside)) for path in paths]
        labels = pd.DataFrame({"file": rows, "subject": [f"s{i % 3}" for i in range(len(rows))], "AU01": 1, "AU02": 0})
        labels.to_csv(root / "labels.csv", index=False)
        out = root / "out"
        argv = ["prepare", "folder", input_dir, root / "labels.csv", out, "--align", align, "--size", "32", "--workers", "1",
                "--folds", "2"]  # fmt: skip
        code, _ = run_hostile(argv, root, out)
        event(f"prepare exit {code}")
        assert code == 0  # good.png is always usable, so the dataset is never empty
        report = json.loads((out / "prepare_report.json").read_text())
        table = read_manifest(out)  # every manifest path is inside OUT and exists
        crops = sorted(path.relative_to(out).as_posix() for path in (out / "images").rglob("*") if path.is_file())
        assert sorted(table.images) == crops  # one crop per row: no two rows share a name
        accounted = sum(len(report[key]) for key in ("missing_image", "unreadable_image", "no_face", "bad_rows"))
        assert report["written"] + accounted == len(rows)  # every label row written or reported
        event(f"prepare: {len(report['bad_rows'])} bad rows, {len(report['unreadable_image'])} unreadable")


@settings(FUZZ, max_examples=EXAMPLES // 2)
@given(images=st.lists(pathological_images(), min_size=1, max_size=3), paths=st.lists(HOSTILE_PATHS, max_size=4))
@example(images=[("png", b"")], paths=["new\nline.png", "loop.png"])
def test_evaluate_on_pathological_images_and_hostile_manifest_paths(checkpoint, images, paths):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        dataset = root / "data"
        files = [path.relative_to(dataset).as_posix() for path in _write_images(dataset, images)]
        _hostile_tree(dataset, _outside(root))
        names = list(dict.fromkeys(files + [path.replace("{abs}", str(root / "outside.png")) for path in paths]))
        GOOD.save(dataset / "train.png")  # the training fold, which evaluate also reads
        count = len(names)
        manifest = {"image": [*names, "train.png"], "subject": ["s0"] * count + ["s1"], "AU01": [1] * count + [0]}
        pd.DataFrame({**manifest, "AU02": [0] * count + [1]}).to_csv(dataset / "manifest.csv", index=False)  # quoted
        write_folds(dataset, [["s0"], ["s1"]], [1, 2])  # every generated row in the test fold
        argv = ["evaluate", checkpoint, "--data", dataset, "--out", root / "run", "--set", "data.num_workers=0"]
        code, _ = run_hostile(argv, root, root / "run")
        event(f"evaluate exit {code}")
        code, _ = run_hostile([*argv, "--skip-bad"], root, root / "run")
        assert code == 0  # good.png is always there to score
        skipped = (
            json.loads((root / "run" / "skipped.json").read_text())["count"] if (root / "run" / "skipped.json").exists() else 0
        )
        assert len(pd.read_csv(root / "run" / "predictions.csv")) + skipped == len(names)  # every row scored or listed
        event(f"evaluate --skip-bad: {skipped} of {len(names)} rows skipped")
