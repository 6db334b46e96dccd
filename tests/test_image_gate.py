"""The one image gate (`auformer.data.images.read_rgb`): sizes checked before decoding, one error type,
every storage converted, and `--skip-bad` runs that go on past any bad image.

The reported bug: a decompression-bomb PNG and a 10000x10 image crashed `detect` and `evaluate` even
with `--skip-bad`, and the good images of the run were never written; `prepare folder` decoded with
OpenCV, so a truncated JPEG became a grey-filled crop reported as fine.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from auformer.data.converters import memory_workers
from auformer.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, open_video, read_rgb
from auformer.data.manifest import write_folds
from auformer.errors import AUFormerError, BadImageError
from hostile import run_hostile
from media import png_claiming, tiny_checkpoint

BOMBS = [
    (9_000, 9_000, "9000x9000 pixels is over the limit of 80,000,000 pixels"),  # our limit, from the header
    (10_000, 9_000, "over the limit of 80,000,000 pixels"),  # over Pillow's warning threshold too
    (30_000, 30_000, "over the limit of 80,000,000 pixels"),  # over Pillow's own error threshold
]


@pytest.mark.parametrize(("width", "height", "message"), BOMBS)
def test_decompression_bomb_refused_before_decoding(tmp_path, width, height, message):
    (tmp_path / "bomb.png").write_bytes(png_claiming(width, height))
    with pytest.raises(BadImageError, match=rf"bomb.png: {message} \(raise it with AUFORMER_MAX_PIXELS\)$"):
        read_rgb(tmp_path / "bomb.png")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((10, 10_000), "10000x10 pixels: one side is more than 20 times the other"),
        ((400, 19), "19x400 pixels: one side is more than 20 times the other"),
        ((4, 4), "4x4 pixels: a side is under 8 pixels"),
        ((1, 1), "1x1 pixels: a side is under 8 pixels"),
    ],
)
def test_degenerate_sizes_refused(tmp_path, shape, message):
    Image.fromarray(np.zeros((*shape, 3), np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(BadImageError, match=rf"odd.png: {message}$") as caught:
        read_rgb(tmp_path / "odd.png")
    assert caught.value.reason == message


def test_pixel_limit_is_a_setting(tmp_path, monkeypatch):
    Image.new("RGB", (40, 40)).save(tmp_path / "small.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    with pytest.raises(BadImageError, match=r"40x40 pixels is over the limit of 1,000 pixels"):
        read_rgb(tmp_path / "small.png")
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(AUFormerError, match=r"AUFORMER_MAX_PIXELS='lots': expected a positive number of pixels"):
        read_rgb(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    monkeypatch.setenv(MAX_PIXELS_ENV, "2e9")  # above Pillow's own threshold: that one is lifted too
    (tmp_path / "big.png").write_bytes(png_claiming(30_000, 30_000))
    with pytest.raises(BadImageError, match="truncated image"):  # no longer refused for its size: decoding fails
        read_rgb(tmp_path / "big.png")
    assert Image.MAX_IMAGE_PIXELS == 2_000_000_000 and DEFAULT_MAX_PIXELS == 80_000_000


def test_every_storage_converts_and_animations_give_their_first_frame(tmp_path):
    red, green = (200, 10, 10), (10, 200, 10)
    frames = [Image.new("RGB", (32, 24), colour) for colour in (red, green)]
    for name in ("anim.gif", "anim.png", "anim.webp"):  # GIF, APNG, animated WebP
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], lossless=True)
    Image.new("CMYK", (32, 24), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    palette = Image.new("P", (32, 24), 3)
    palette.putpalette([0, 0, 0] * 3 + list(red) + [0, 0, 0] * 252)
    palette.info["transparency"] = 0
    palette.save(tmp_path / "palette.png")
    Image.new("LA", (32, 24), (120, 7)).save(tmp_path / "la.png")
    Image.fromarray(np.full((24, 32), 120 * 257, np.uint16)).save(tmp_path / "grey16.png")
    expected = {"anim.gif": red, "anim.png": red, "anim.webp": red, "cmyk.jpg": (255, 0, 0), "palette.png": red}
    expected |= {"la.png": (120,) * 3, "grey16.png": (120,) * 3}
    for name, colour in expected.items():
        image = read_rgb(tmp_path / name)
        assert image.shape == (24, 32, 3) and image.dtype == np.uint8, name
        np.testing.assert_allclose(image[12, 16], colour, atol=3, err_msg=name)


def _broken_png() -> bytes:
    """A PNG whose compressed pixel stream is overwritten in the middle."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, "PNG")
    content = bytearray(buffer.getvalue())
    start = content.index(b"IDAT") + 20
    content[start : start + 40] = b"\xff" * 40
    return bytes(content)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file (0 bytes)"),
        (_broken_png(), "corrupt or unsupported image data (OSError: broken data stream when reading image file)"),
        (b"hello, world", "not an image (or a format Pillow cannot read)"),
    ],
)
def test_one_error_type_that_survives_pickling(tmp_path, content, message):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(BadImageError) as caught:
        read_rgb(tmp_path / "bad.png")
    assert str(caught.value) == f"{tmp_path / 'bad.png'}: {message}"
    copy = pickle.loads(pickle.dumps(caught.value))  # a DataLoader worker or prepare's process pool sends it back
    assert isinstance(copy, BadImageError) and str(copy) == str(caught.value)


def test_video_frames_pass_the_same_size_check(tmp_path):
    writer = cv2.VideoWriter(str(tmp_path / "strip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (400, 16))
    for _ in range(3):
        writer.write(np.zeros((16, 400, 3), np.uint8))
    writer.release()
    with pytest.raises(BadImageError, match=r"strip.avi: 400x16 pixels: one side is more than 20 times the other"):
        open_video(tmp_path / "strip.avi")


def _bad_and_good(folder: Path) -> None:
    """bomb.png (a 30000x30000 header), strip.png (10000x10), cut.jpg (truncated), and two good photos."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bomb.png").write_bytes(png_claiming(30_000, 30_000))
    Image.fromarray(np.full((10, 10_000, 3), 128, np.uint8)).save(folder / "strip.png")
    Image.fromarray(data.astronaut()).save(folder / "cut.jpg")
    (folder / "cut.jpg").write_bytes((folder / "cut.jpg").read_bytes()[:20_000])
    for name, shift in (("good1.png", 0), ("good2.png", 40)):
        Image.fromarray(np.roll(data.astronaut(), shift, axis=0)[:256, 100:356]).save(folder / name)


def test_detect_and_evaluate_skip_every_bad_image_and_keep_the_good(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "ckpt" / "tiny", [1, 2])
    _bad_and_good(tmp_path / "in")
    argv = ["detect", tmp_path / "in", "--checkpoint", checkpoint, "--face-detector", "none"]
    code, stderr = run_hostile([*argv, "--out", tmp_path / "stop"], tmp_path, tmp_path / "stop")
    assert code == 2 and "error: " in stderr and "bomb.png: over the limit" in stderr
    assert run_hostile([*argv, "--out", tmp_path / "skip", "--skip-bad"], tmp_path, tmp_path / "skip")[0] == 0
    assert pd.read_csv(tmp_path / "skip" / "images.csv")["input"].map(lambda p: Path(p).name).tolist() == [
        "good1.png",
        "good2.png",
    ]
    skipped = json.loads((tmp_path / "skip" / "detect.json").read_text())["skipped"]
    assert [Path(line.split(":")[0]).name for line in skipped] == ["bomb.png", "cut.jpg", "strip.png"]

    names = sorted(path.name for path in (tmp_path / "in").iterdir())
    rows = [f"{name},s{index % 2},{index % 2}" for index, name in enumerate(names)]
    (tmp_path / "in" / "manifest.csv").write_text("image,subject,AU01,AU02\n" + "\n".join(f"{row},0" for row in rows) + "\n")
    write_folds(tmp_path / "in", [["s0"], ["s1"]], [1, 2])
    argv = ["evaluate", checkpoint, "--data", tmp_path / "in", "--set", "data.num_workers=0", "--set", "data.fold=0"]
    assert run_hostile([*argv, "--out", tmp_path / "run", "--skip-bad"], tmp_path, tmp_path / "run")[0] == 0
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert skipped["count"] == 3 and all("good" not in line for line in skipped["skipped"])


def test_prepare_folder_reports_a_truncated_photo_instead_of_a_grey_crop(tmp_path):
    _bad_and_good(tmp_path / "in")
    (tmp_path / "labels.csv").write_text(
        "file,subject,AU01\n"
        + "".join(f"{name},s{i},1\n" for i, name in enumerate(sorted(p.name for p in (tmp_path / "in").iterdir())))
    )
    out = tmp_path / "out"
    argv = [
        "prepare",
        "folder",
        tmp_path / "in",
        tmp_path / "labels.csv",
        out,
        "--align",
        "none",
        "--workers",
        "1",
        "--folds",
        "2",
    ]
    assert run_hostile(argv, tmp_path, out)[0] == 0
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["written"] == 2 and sorted(report["unreadable_image"]) == [
        f"{tmp_path / 'in' / 'bomb.png'}: over the limit of 80,000,000 pixels (raise it with AUFORMER_MAX_PIXELS)",
        f"{tmp_path / 'in' / 'cut.jpg'}: truncated image (the file ends inside the image data)",
        f"{tmp_path / 'in' / 'strip.png'}: 10000x10 pixels: one side is more than 20 times the other",
    ]


def test_prepare_workers_fit_in_memory(monkeypatch, capsys):
    monkeypatch.setattr("auformer.data.converters.available_memory", lambda: 4 * 2**30)
    assert memory_workers(8) == 2  # 80 MP x 12 bytes = 0.9 GB a worker, in half of 4 GB
    assert "using 2 worker processes, not 8" in capsys.readouterr().out
    monkeypatch.setenv(MAX_PIXELS_ENV, str(10**6))
    assert memory_workers(8) == 8


def test_read_images_are_writable_so_torchvision_does_not_warn(tmp_path):
    """Pillow's buffers are read-only; torchvision warned "NumPy array is not writable" on every image of evaluate/explain."""
    import warnings

    from auformer.data.images import read_rgb
    from auformer.data.transforms import build_transform

    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "face.png")
    image = read_rgb(tmp_path / "face.png")
    assert image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_transform(False, 32, [0.5] * 3, [0.5] * 3)(image)
