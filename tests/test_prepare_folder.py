"""`auformer prepare folder` on real photos shipped by scikit-image: faces found, every unusable
file and label row reported, manifest.csv and subject-exclusive folds.json written."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data

from auformer.cli import main
from auformer.data.converters.folder import read_labels
from auformer.data.manifest import read_folds, read_manifest


def _write_rgb(path, image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """astronaut, 4 LFW faces and 2 LFW non-faces (25 px, upscaled to 150), a 3-frame video, a corrupt file."""
    root = tmp_path_factory.mktemp("faces")
    _write_rgb(root / "astronaut.png", data.astronaut())
    lfw = (data.lfw_subset() * 255).astype(np.uint8)  # (200, 25, 25): 100 faces, then 100 non-faces
    for name, index in (("lfw0", 0), ("lfw1", 1), ("lfw2", 2), ("lfw3", 3), ("street0", 100), ("street1", 101)):
        big = cv2.resize(lfw[index], (150, 150), interpolation=cv2.INTER_CUBIC)
        _write_rgb(root / "lfw" / f"{name}.png", np.stack([big] * 3, axis=-1))
    writer = cv2.VideoWriter(str(root / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 5, (256, 256))
    for _ in range(3):
        writer.write(cv2.cvtColor(cv2.resize(data.astronaut(), (256, 256)), cv2.COLOR_RGB2BGR))
    writer.release()
    (root / "broken.jpg").write_bytes(b"not an image")
    labels = pd.DataFrame(
        [
            ["astronaut.png", "", "eileen", "1", "0", "3"],
            ["lfw/lfw0.png", "", "p0", "0", "1", "0"],
            ["lfw/lfw1.png", "", "p1", "1", "", "1"],
            ["lfw/lfw2.png", "", "p2", "0", "1", "4"],
            ["lfw/lfw3.png", "", "p3", "1", "0", ""],
            ["lfw/street0.png", "", "p4", "0", "0", "0"],
            ["lfw/street1.png", "", "p5", "0", "0", "0"],
            ["clip.avi", "0", "eileen", "1", "1", "2"],
            ["clip.avi", "2", "eileen", "0", "1", "1"],
            ["clip.avi", "7", "eileen", "0", "1", "1"],  # past the end of the video
            ["broken.jpg", "", "p6", "1", "1", "1"],
            ["gone.png", "", "p7", "1", "1", "1"],
            ["lfw/lfw0.png", "", "p0", "1", "1", "1"],  # labelled twice
            ["lfw/lfw3.png", "", "p3", "2", "0", "1"],  # bad occurrence
        ],
        columns=["file", "frame", "subject", "AU01", "12_c", "AU25_r"],
    )
    labels.to_csv(root / "labels.csv", index=False)
    return root


def test_label_columns_in_every_parsed_form_with_an_intensity_threshold(photo_folder):
    rows, aus, bad = read_labels(photo_folder / "labels.csv", intensity_threshold=2)
    assert aus == [1, 12, 25]
    astronaut = rows[rows["file"] == "astronaut.png"].iloc[0]
    assert astronaut["labels"].tolist() == [1.0, 0.0, 1.0]  # AU25 intensity 3 >= 2
    assert astronaut["intensity"].tolist() == [-1.0, -1.0, 3.0]
    assert rows[rows["file"] == "lfw/lfw1.png"].iloc[0]["labels"].tolist() == [1.0, -1.0, 0.0]  # empty = unknown; 1 < 2
    assert bad == ["labels.csv line 15: occurrence '2' is not 1, 0 or empty/-1/9 (unknown)"]
    with pytest.raises(ValueError, match=r"intensity columns \(AU25_r\) need --intensity-threshold"):
        read_labels(photo_folder / "labels.csv")


@pytest.mark.slow
def test_prepare_folder_on_real_photos(photo_folder, tmp_path, capsys):
    out = tmp_path / "prepared"
    argv = ["prepare", "folder", str(photo_folder), str(photo_folder / "labels.csv"), str(out),
            "--intensity-threshold", "2", "--folds", "2", "--size", "64", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    print(printed)
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["frames_labelled"] == 12 and report["written"] == 7  # astronaut, 4 LFW faces, 2 video frames
    assert sorted(report["no_face"]) == [str(photo_folder / "lfw" / f"street{k}.png") for k in (0, 1)]
    assert report["unreadable_image"] == [f"{photo_folder / 'broken.jpg'}: not an image (or a format Pillow cannot read)"]
    assert sorted(report["missing_image"]) == [f"{photo_folder / 'clip.avi'}#7", str(photo_folder / "gone.png")]
    assert report["bad_rows"] == [
        "labels.csv line 15: occurrence '2' is not 1, 0 or empty/-1/9 (unknown)",
        "labels.csv line 14: lfw/lfw0.png: photo labelled twice",
    ]
    table = read_manifest(out)
    print((out / "manifest.csv").read_text().splitlines()[:4])
    assert sorted(table.images)[:2] == ["images/astronaut.jpg", "images/clip_f000000.jpg"]
    assert table.aus == [1, 12, 25]
    row = table.images.index("images/clip_f000002.jpg")
    assert table.labels[row].tolist() == [0.0, 1.0, 0.0]  # intensity 1 < 2
    assert table.intensity[row].tolist() == [-1.0, -1.0, 1.0]  # the AU25_r value is kept; AU01/AU12 have none
    assert cv2.imread(str(out / "images" / "lfw" / "lfw0.jpg")).shape == (64, 64, 3)
    folds, _ = read_folds(out)
    assert len(folds) == 2 and not set(folds[0]) & set(folds[1])
    # only subjects with a written image: p4-p7 (no face, unreadable, missing) would leave a fold short or empty
    assert set(folds[0]) | set(folds[1]) == {"eileen", "p0", "p1", "p2", "p3"}
    assert json.loads((out / "prepare_report.json").read_text())["subjects_in_no_fold"] == []
    assert "folder: 7 of 12 labelled frames written" in printed


def _tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_earlier_prepared_dataset_is_never_silently_replaced(photo_folder, tmp_path, capsys):
    """A second `prepare` into the same OUT refuses in one line and changes nothing; --overwrite removes
    exactly what prepare wrote (a link is removed, never followed) and keeps the user's other files."""
    out = tmp_path / "prepared"
    argv = ["prepare", "folder", str(photo_folder), str(photo_folder / "labels.csv"), str(out),
            "--intensity-threshold", "2", "--size", "32", "--workers", "1", "--align", "none"]  # fmt: skip
    assert main(argv) == 0
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    capsys.readouterr()
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "already holds a prepared dataset" in error[0] and "--overwrite" in error[0]
    assert _tree(out) == before
    # An earlier run's stale crop goes with --overwrite; images/ as a link to a folder outside is unlinked, not emptied.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.jpg").write_bytes(b"x")
    (out / "images" / "stale.jpg").write_bytes(b"old")
    assert main([*argv, "--overwrite"]) == 0
    assert not (out / "images" / "stale.jpg").exists() and (out / "notes.txt").read_text() == "mine"
    shutil.rmtree(out / "images")
    (out / "images").symlink_to(outside, target_is_directory=True)
    assert main([*argv, "--overwrite"]) == 0
    assert (outside / "keep.jpg").read_bytes() == b"x" and not (out / "images").is_symlink()
