"""Every bad input of docs/reliability.md: what the user sees (one line naming file and line, or a counted skip)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from auformer.cli import main
from auformer.data import AUTable, read_folds, read_manifest
from auformer.data.images import drop_unreadable, read_rgb
from auformer.errors import AUFormerError, one_line
from auformer.metrics import au_metrics
from test_detect import checkpoint  # noqa: F401  (the tiny detection checkpoint fixture)


def _manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (8, 8), (120, 80, 40)).save(folder / name)
    (folder / "manifest.csv").write_text(text)
    return folder


def _one_line_error(function, *args, match: str, error: type[Exception] = AUFormerError) -> str:
    with pytest.raises(error, match=match) as caught:
        function(*args)
    assert "\n" not in str(caught.value)
    return str(caught.value)


@pytest.mark.parametrize("text, match", [
    ("image,subject,AU01,AU02\na.png,s1,1,0\nb.png,s1,1\n", r"manifest.csv: line 3: 3 columns, the header has 4"),
    ("image,subject,AU01,AU02\na.png,s1,1,0,1\n", r"manifest.csv: line 2: 5 columns, the header has 4"),
    ("image,subject,AU01,AU02\na.png,s1,1,0\nb.png,s1,9,0\n", r"manifest.csv: line 3, column AU01: invalid label '9'"),
    ("image,subject,AU01,AU99\na.png,s1,1,0\n", r"manifest.csv: column 'AU99': unknown AU 'AU99'"),
    ("image,subject,AU01,Smile\na.png,s1,1,0\n", r"manifest.csv: column 'Smile' is not an AU column"),
    ("image,subject,AU01\n", r"manifest.csv: no rows after the header"),
    ("", r"manifest.csv: empty file"),
    ("image,subject,AU01\na.png,s1,1\n\nb.png,s2,0\na.png,s1,0\n", r"manifest.csv: line 5: duplicate row for image 'a.png' \(first on line 2\)"),
    ("image,subject,AU01\na.png,,1\n", r"manifest.csv: line 2: empty subject"),
])  # fmt: skip
def test_manifest_errors_name_file_and_line(tmp_path, text, match):
    _one_line_error(read_manifest, _manifest(tmp_path / "data", text), match=match)


def test_missing_image_counted(tmp_path):
    folder = _manifest(tmp_path / "data", "image,subject,AU01\na.png,s1,1\ngone.png,s1,0\n")
    _one_line_error(read_manifest, folder, match=r"1 of 2 image files are missing \(first: gone.png\)", error=FileNotFoundError)
    table, skipped = drop_unreadable(read_manifest(folder, on_missing="keep"))
    assert table.images == ["a.png"] and skipped == [f"{folder / 'gone.png'}: image file not found"]


def test_subject_in_two_folds(tmp_path):
    (tmp_path / "folds.json").write_text(
        json.dumps({"folds": [{"test_subjects": ["s1", "s2"]}, {"test_subjects": ["s3", "s2"]}], "aus": ["AU01"]})
    )
    _one_line_error(read_folds, tmp_path, match=r"folds.json: subject 's2' is in folds 0 and 1")


def _jpeg(path: Path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_refused(tmp_path, suffix):
    path = _jpeg(tmp_path / f"full{suffix}")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _one_line_error(read_rgb, path, match=rf"full{suffix}: truncated image \(the file ends inside the image data\)")


def test_non_image_with_image_extension(tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    _one_line_error(read_rgb, tmp_path / "notes.jpg", match=r"notes.jpg: not an image \(or a format Pillow cannot read\)")
    _one_line_error(read_rgb, tmp_path / "gone.jpg", match=r"gone.jpg: image file not found", error=FileNotFoundError)


def test_grey_rgba_and_16_bit_images_converted(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4  # (8, 8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.dstack([np.full((8, 8, 3), 200, np.uint8), np.zeros((8, 8), np.uint8)])  # (8, 8, 4), transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    wide = grey.astype(np.uint16) * 257  # the same picture in 16 bits
    cv2.imwrite(str(tmp_path / "grey16.png"), wide)
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.dstack([wide, wide, wide]))
    for name in ("grey.png", "grey16.png", "rgb16.png"):
        image = read_rgb(tmp_path / name)
        assert image.dtype == np.uint8 and image.shape == (8, 8, 3), name
        np.testing.assert_array_equal(image[..., 1], grey, err_msg=name)  # 16-bit keeps its tones, not clipped white
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgba[..., :3])


def test_fold_without_positives_warns_and_marks_undefined():
    labels = np.array([[1, 0], [0, 0], [1, 0]], dtype=np.float32)  # AU02 never present
    probs = np.array([[0.9, 0.1], [0.2, 0.3], [0.8, 0.2]])
    with pytest.warns(UserWarning, match=r"no positive label for AU02"):
        metrics = au_metrics(probs, labels, aus=[1, 2])
    assert metrics["undefined_aus"] == ["AU02"] and metrics["per_au"]["AU02"]["undefined"]


def test_user_error_is_one_line_and_a_bug_keeps_its_traceback(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {img_size: [1,\n")
    assert main(["train", "--preset", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: preset") and "bad.yaml" in err and "\n" not in err

    def bug(*args, **kwargs):
        raise ValueError("a bug in auformer")  # a plain ValueError is not a user error

    monkeypatch.setattr("auformer.engine.protocols.train", bug)
    with pytest.raises(ValueError, match="a bug"):
        main(["train", "--out", str(tmp_path / "run")])


def test_error_in_dataloader_worker_is_one_line(tmp_path):
    (tmp_path / "bad.png").write_text("not a png")
    table = AUTable(tmp_path, ["bad.png"], ["s"], np.zeros((1, 1)), [1])
    from auformer.data import AUDataset

    loader = torch.utils.data.DataLoader(AUDataset(table, lambda image: image), num_workers=1)
    with pytest.raises(AUFormerError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)  # what torch re-raises ...
    assert one_line(caught.value) == f"{tmp_path / 'bad.png'}: not an image (or a format Pillow cannot read)"


def noise_video(path: Path, frames: int, width: int = 64, height: int = 48) -> Path:
    """A 10 fps MJPEG video of random frames (``--face-detector none`` treats each as a face)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    rng = np.random.default_rng(0)
    for _ in range(frames):
        writer.write(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    writer.release()
    return path


def test_detect_bad_video_stops_or_is_skipped(checkpoint, tmp_path, capsys):  # noqa: F811
    broken = tmp_path / "in" / "broken.avi"
    broken.parent.mkdir()
    broken.write_bytes(b"RIFF but not a video" * 10)
    noise_video(tmp_path / "in" / "cut.avi", 30)
    data = (tmp_path / "in" / "cut.avi").read_bytes()
    (tmp_path / "in" / "cut.avi").write_bytes(data[: len(data) // 2])  # stops mid-stream, the index says 30 frames
    args = ["detect", str(tmp_path / "in"), "--checkpoint", str(checkpoint), "--face-detector", "none"]
    assert main([*args, "--out", str(tmp_path / "stop")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert err.startswith("error:") and "broken.avi: cannot open video" in err

    assert main([*args, "--out", str(tmp_path / "skip"), "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "skip" / "detect.json").read_text())
    assert len(summary["skipped"]) == 2 and "2 unreadable inputs skipped" in printed
    assert "broken.avi: cannot open video" in summary["skipped"][0]
    assert "cut.avi: decoding stopped at frame" in summary["skipped"][1] and "of 30" in summary["skipped"][1]
    assert f"skipped: {summary['skipped'][1]}" in printed
    import pandas as pd

    frames = pd.read_csv(tmp_path / "skip" / "cut.csv")["frame"].tolist()
    assert 0 < len(frames) < 30 and frames == list(range(len(frames)))  # the decodable part is kept


def test_train_skip_bad_lists_bad_images(tmp_path, capsys):
    from auformer.data.synthetic import write_synthetic
    from test_train import write_tiny_preset

    root = write_synthetic(tmp_path / "data", num_images=60, size=32, seed=0, num_subjects=6, num_folds=3)
    table = read_manifest(root)
    (root / table.images[0]).write_bytes(b"broken")
    (root / table.images[1]).unlink()
    preset = write_tiny_preset(tmp_path / "tiny.yaml", train={"epochs": 1, "batch_size": 8}, data={"dataset": "mine"})
    assert main(["train", "--preset", preset, "--data", str(root), "--out", str(tmp_path / "stop")]) == 2
    assert "1 of 60 image files are missing" in capsys.readouterr().err
    assert main(["train", "--preset", preset, "--data", str(root), "--out", str(tmp_path / "run"), "--skip-bad"]) == 0
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert skipped["count"] == 2
    assert "not an image" in skipped["skipped"][0] and "image file not found" in skipped["skipped"][1]
    assert "2 bad images skipped" in capsys.readouterr().out
