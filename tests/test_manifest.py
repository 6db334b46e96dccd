"""The manifest format, folds.json and ME-GraphAU list files: round trips and error messages."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from auformer.data import AUDataset, AUTable, read_folds, read_list_files, read_manifest, write_folds, write_manifest
from auformer.data.manifest import subject_from_path


def _write_images(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / name)


def _table(root: Path) -> AUTable:
    images = ["F001/T1/1.jpg", "F001/T1/2.jpg", "M002/T2/3.jpg"]
    _write_images(root, images)
    labels = np.array([[1, 0, -1], [0, 0, 1], [-1, 1, 0]], dtype=np.float32)
    return AUTable(root, images, ["F001", "F001", "M002"], labels, [1, 2, 12])


def test_manifest_round_trip_keeps_unknown_labels(tmp_path):
    table = _table(tmp_path)
    path = write_manifest(table, tmp_path)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,subject,AU01,AU02,AU12"
    assert lines[1] == "F001/T1/1.jpg,F001,1,0,"  # unknown written empty
    back = read_manifest(tmp_path)
    assert back.images == table.images and back.subjects == table.subjects and back.aus == [1, 2, 12]
    np.testing.assert_array_equal(back.labels, table.labels)
    assert back.labels.dtype == np.float32
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_write_manifest_elsewhere_rewrites_relative_paths_inside_only(tmp_path):
    table = _table(tmp_path / "data")
    write_manifest(table.subset([2]), tmp_path)  # a folder above the images: paths rewritten, still inside
    back = read_manifest(tmp_path / "manifest.csv")
    assert back.images == ["data/M002/T2/3.jpg"]
    assert back.image_path(0) == (tmp_path / "data/M002/T2/3.jpg").resolve()
    with pytest.raises(ValueError, match=r"sub/manifest.csv: row 1: path '../data/M002/T2/3.jpg' is not inside"):
        write_manifest(table.subset([2]), tmp_path / "sub")  # a manifest may not point out of its folder
    assert not (tmp_path / "sub" / "manifest.csv").exists()


def test_subset_and_select_aus(tmp_path):
    table = _table(tmp_path)
    picked = table.subset(np.array([False, True, True]))
    assert picked.images == ["F001/T1/2.jpg", "M002/T2/3.jpg"]
    selected = table.select_aus(["AU12", 1])
    assert selected.aus == [12, 1]
    np.testing.assert_array_equal(selected.labels[:, 0], [-1, 1, 0])
    with pytest.raises(ValueError, match="AU04"):
        table.select_aus([4])


def test_minus_one_and_decimal_labels_are_read(tmp_path):
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "manifest.csv").write_text("image,subject,AU01,AU02,AU04\na.png,s1,-1,1.0,0\n")
    np.testing.assert_array_equal(read_manifest(tmp_path).labels, [[-1, 1, 0]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("image,subject,AU01\na.png,s1,9\n", r"line 2, column AU01: invalid label '9'"),
        ("image,subject,AU01,AU99\na.png,s1,1,0\n", r"column 'AU99'"),
        ("image,subject,AU01,Smile\na.png,s1,1,0\n", r"'Smile' is not an AU column"),
        ("image,subject,AU01,AU1\na.png,s1,1,0\n", r"AU1 appears in two columns"),
        ("subject,image,AU01\ns1,a.png,1\n", r"first columns must be 'image,subject'"),
        ("image,subject\na.png,s1\n", r"no AU columns"),
    ],
)
def test_bad_manifest_errors_name_the_problem(tmp_path, content, message):
    _write_images(tmp_path, ["a.png"])
    (tmp_path / "manifest.csv").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        read_manifest(tmp_path)
    assert "manifest.csv" in str(error.value)


def test_missing_images_error_or_skip_with_count(tmp_path):
    table = _table(tmp_path)
    write_manifest(table, tmp_path)
    (tmp_path / "F001/T1/2.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="1 of 3 image files are missing"):
        read_manifest(tmp_path)
    with pytest.warns(UserWarning, match="1 of 3 image files are missing"):
        kept = read_manifest(tmp_path, on_missing="skip")
    assert kept.images == ["F001/T1/1.jpg", "M002/T2/3.jpg"]
    with pytest.raises(FileNotFoundError, match="no manifest"):
        read_manifest(tmp_path / "nowhere")


def test_folds_round_trip_and_bad_file(tmp_path):
    path = write_folds(tmp_path, [["F001"], ["M002", "F003"]], [1, 2, 12])
    assert read_folds(path) == ([["F001"], ["M002", "F003"]], [1, 2, 12])
    assert '"AU12"' in path.read_text()
    (tmp_path / "folds.json").write_text('{"folds": [["F001"]]}')
    with pytest.raises(ValueError, match="folds.json"):
        read_folds(tmp_path)


def test_list_files(tmp_path):
    _write_images(tmp_path / "img", ["F001/T1/1.jpg", "SN003/2.jpg"])
    (tmp_path / "BP4D_test_img_path_fold1.txt").write_text("F001/T1/1.jpg\nSN003/2.jpg\n")
    (tmp_path / "BP4D_test_label_fold1.txt").write_text("1 0 -1\n0 1 1\n")
    table = read_list_files(
        tmp_path / "BP4D_test_img_path_fold1.txt", tmp_path / "BP4D_test_label_fold1.txt", [1, 2, 4], tmp_path / "img"
    )
    assert table.subjects == ["F001", "SN003"]
    np.testing.assert_array_equal(table.labels, [[1, 0, -1], [0, 1, 1]])
    assert AUDataset(table, lambda image: image.shape)[1][0] == (8, 8, 3)
    (tmp_path / "BP4D_test_label_fold1.txt").write_text("1 0 -1\n0 1\n")
    with pytest.raises(ValueError, match=r"label_fold1.txt: line 2: 2 labels, expected 3"):
        read_list_files(tmp_path / "BP4D_test_img_path_fold1.txt", tmp_path / "BP4D_test_label_fold1.txt", [1, 2, 4], tmp_path)


def test_subject_from_path():
    assert subject_from_path("BP4D/F012/T3/0001.jpg") == "F012"
    assert subject_from_path("sub05/EP01_01/img3.jpg") == "sub05"
    assert subject_from_path("alice/frame1.png") == "alice"
    assert subject_from_path("frame1.png") == "unknown"


def test_missing_aus_say_the_setting_that_fixes_them(tmp_path):
    with pytest.raises(ValueError, match=r"AUs AU04, AU25 are not in this dataset \(it has AU01, AU02, AU12\); "
                       r"keep the ones it has with --set data.aus=\[12,1\]; the run cannot start"):  # fmt: skip
        _table(tmp_path).select_aus([12, 4, 1, 25])
