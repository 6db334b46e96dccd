"""Paths stay inside their roots, outputs get distinct names, and nothing a command reads is modified.

The reported bug: `prepare folder` with a label row ``../../victim.jpg`` read a photo outside INPUT
and replaced it with a 32 px crop. Every path read from a user's file now goes through
`auformer.files.resolve_inside`, every output name through `auformer.files.UniqueNames`, and
every output folder through `auformer.files.check_apart`.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

import auformer
from auformer.data import read_list_files, read_manifest
from auformer.data.converters.casme2 import prepare_casme2
from auformer.data.images import drop_unreadable
from auformer.errors import AUFormerError
from auformer.files import UniqueNames, check_apart, resolve_inside
from fake_raw import make_fake_casme2
from hostile import run_hostile
from media import tiny_checkpoint


def _photo(path: Path, variant: int = 0) -> Path:
    """The astronaut, rolled sideways by ``variant`` x 61 px: each variant another picture."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.roll(data.astronaut(), 61 * variant, axis=1)).save(path)
    return path


@pytest.fixture
def tree(tmp_path) -> Path:
    """root/victim.jpg beside root/data/input/{a.png, sub/b.png} and a link inside INPUT pointing at the victim."""
    _photo(tmp_path / "victim.jpg")
    _photo(tmp_path / "data" / "input" / "a.png")
    _photo(tmp_path / "data" / "input" / "sub" / "b.png", 1)
    (tmp_path / "data" / "input" / "link.jpg").symlink_to(tmp_path / "victim.jpg")
    return tmp_path


def test_resolve_inside_refuses_every_way_out(tree):
    root = tree / "data" / "input"
    assert resolve_inside(root, "sub/../a.png", "x") == (root / "a.png").resolve()
    for escape in ("../../victim.jpg", str(tree / "victim.jpg"), "link.jpg", "sub/../../input/../../victim.jpg", ".", "", "a\0b"):
        with pytest.raises(AUFormerError, match=r"^labels.csv line 3: path .* is not inside"):
            resolve_inside(root, escape, "labels.csv line 3")
    (tree / "alias").symlink_to(root)  # a root that is itself a link is fine
    assert resolve_inside(tree / "alias", "a.png", "x") == (root / "a.png").resolve()


def test_unique_names_keep_every_output_apart():
    names = UniqueNames(["images.csv"])
    claimed = [
        names.claim(name) for name in ("images.csv", "images/dup.jpg", "images/dup.jpg", "images/DUP.jpg", "x/../images/dup.jpg")
    ]
    assert claimed == ["images_2.csv", "images/dup.jpg", "images/dup_2.jpg", "images/DUP_3.jpg", "images/dup_4.jpg"]


def test_check_apart(tmp_path):
    (tmp_path / "in").mkdir()
    check_apart(tmp_path / "out", [tmp_path / "in"])
    for out, inputs, inside_ok in (
        (tmp_path / "in", [tmp_path / "in"], True),  # OUT == INPUT
        (tmp_path / "in" / "out", [tmp_path / "in"], False),  # OUT inside INPUT
        (tmp_path, [tmp_path / "in"], True),  # OUT holds an input
    ):
        with pytest.raises(AUFormerError, match="output folder"):
            check_apart(out, inputs, inside_ok)
    check_apart(tmp_path / "in" / "out", [tmp_path / "in"], inside_ok=True)


def test_prepare_folder_reads_and_writes_only_inside_its_folders(tree, capsys):
    """The reported bug and its siblings: '..', an absolute path, a link out, two names for one crop."""
    input_dir, out = tree / "data" / "input", tree / "data" / "out"
    _photo(input_dir / "dup.png", 2)
    _photo(input_dir / "dup.jpg", 3)
    rows = ["../../victim.jpg", str(tree / "victim.jpg"), "link.jpg", "a.png", "sub/../a.png", "dup.png", "dup.jpg", "sub/b.png"]
    labels = tree / "data" / "labels.csv"
    pd.DataFrame({"file": rows, "subject": [f"s{i}" for i in range(len(rows))], "AU01": [1, 0] * 4}).to_csv(labels, index=False)
    argv = ["prepare", "folder", input_dir, labels, out, "--align", "none", "--size", "32", "--workers", "1"]
    assert run_hostile(argv, tree, out)[0] == 0  # the victim and every input unchanged, nothing written outside OUT
    report = json.loads((out / "prepare_report.json").read_text())
    outside = "not inside INPUT (an absolute path, '..' out of it, or a link out of it)"
    assert sorted(report["bad_rows"]) == sorted(
        [f"labels.csv line 2: ../../victim.jpg: {outside}", f"labels.csv line 3: {tree / 'victim.jpg'}: {outside}",
         f"labels.csv line 4: link.jpg: {outside}", "labels.csv line 6: a.png: photo labelled twice"]
    )  # fmt: skip
    table = read_manifest(out)
    assert sorted(table.images) == ["images/a.jpg", "images/dup.jpg", "images/dup_2.jpg", "images/sub/b.jpg"]
    assert len({cv2.imread(str(out / image)).tobytes() for image in table.images}) == 4  # four distinct crops
    assert sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*.jpg")) == sorted(table.images)


@pytest.mark.parametrize("where", ["same", "inside", "labels_in_out"])
def test_prepare_folder_refuses_output_over_its_inputs(tree, where, capsys):
    input_dir = tree / "data" / "input"
    labels = input_dir / "labels.csv"
    labels.write_text("file,subject,AU01\na.png,s1,1\nsub/b.png,s2,0\n")
    out = {"same": input_dir, "inside": input_dir / "prepared", "labels_in_out": tree / "data"}[where]
    argv = ["prepare", "folder", input_dir, labels, out, "--align", "none", "--workers", "1", "--folds", "2"]
    code, stderr = run_hostile(argv, tree, tree / "nothing")
    assert code == 2 and "error: output folder" in stderr  # refused before anything is written anywhere


def test_manifest_and_list_paths_stay_inside(tree, capsys):
    root = tree / "data" / "input"
    (root / "manifest.csv").write_text("image,subject,AU01\na.png,s1,1\n../../victim.jpg,s2,0\nlink.jpg,s3,1\n")
    with pytest.raises(AUFormerError, match=r"manifest.csv: line 3: path '../../victim.jpg' is not inside .* \(2 such rows\)"):
        read_manifest(root)
    with pytest.warns(UserWarning, match="2 such rows"):
        assert read_manifest(root, on_missing="skip").images == ["a.png"]
    table, skipped = drop_unreadable(read_manifest(root, on_missing="keep"))  # --skip-bad: listed, not read
    assert table.images == ["a.png"] and len(skipped) == 2 and all("is not inside" in line for line in skipped)

    (tree / "img.txt").write_text("a.png\n\n/etc/hostname\nsub/b.png\n")
    (tree / "label.txt").write_text("1\n0\n1\n")
    with pytest.raises(AUFormerError, match=r"img.txt: line 3: path '/etc/hostname' is not inside"):
        read_list_files(tree / "img.txt", tree / "label.txt", [1], root)
    assert read_list_files(tree / "img.txt", tree / "label.txt", [1], root, "skip").images == ["a.png", "sub/b.png"]


def test_evaluate_list_with_a_path_out_of_the_root_is_skipped_or_refused(tree, capsys):
    checkpoint = tiny_checkpoint(tree / "ckpt" / "tiny", [1])
    root = tree / "data" / "input"
    (tree / "data" / "img.txt").write_text("a.png\n../../victim.jpg\nsub/b.png\n")
    (tree / "data" / "label.txt").write_text("1\n0\n0\n")
    argv = ["evaluate", checkpoint, "--list", tree / "data" / "img.txt", tree / "data" / "label.txt", "--image-root", root,
            "--set", "data.num_workers=0"]  # fmt: skip
    code, stderr = run_hostile([*argv, "--out", tree / "run"], tree, tree / "run")
    assert code == 2 and "img.txt: line 2: path '../../victim.jpg' is not inside" in stderr
    assert run_hostile([*argv, "--out", tree / "run", "--skip-bad"], tree, tree / "run")[0] == 0
    skipped = json.loads((tree / "run" / "skipped.json").read_text())["skipped"]
    assert len(skipped) == 1 and "'../../victim.jpg' is not inside" in skipped[0]


def test_detect_plots_of_photos_with_one_name_stay_apart_and_out_is_not_searched(tree, capsys):
    checkpoint = tiny_checkpoint(tree / "ckpt" / "tiny", [1, 2])
    photos = tree / "photos"
    _photo(photos / "a" / "x.png")
    _photo(photos / "b" / "x.png", 1)
    out = photos / "results"  # OUT inside the input folder: allowed, and never read back as input
    argv = ["detect", photos, "--checkpoint", checkpoint, "--out", out, "--plot", "--face-detector", "none"]
    assert run_hostile(argv, tree, out)[0] == 0
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["x_2_face0.png", "x_face0.png"]
    assert run_hostile(["detect", photos / "a" / "x.png", *argv[1:], "--overwrite"], tree, out)[0] == 0  # named twice
    assert len(pd.read_csv(out / "images.csv")) == 2  # analysed once; its own plots were not taken as photos
    for inputs, out in ((photos, photos), (photos / "a" / "x.png", photos / "a")):  # OUT is or holds an input
        code, stderr = run_hostile(["detect", inputs, "--checkpoint", checkpoint, "--out", out], tree, tree / "nothing")
        assert code == 2 and "error: output folder" in stderr


def test_casme2_filename_out_of_the_release_is_a_bad_row_and_a_repeated_clip_gets_its_own_crop(tmp_path):
    make_fake_casme2(tmp_path / "raw", subjects=4, clips=1)
    sheet = tmp_path / "raw" / "CASME2-coding-20140508.xlsx"
    rows = pd.read_excel(sheet)
    extra = [
        [2, "../../../outside", 1, 12, 14, "1", "x"],
        [2, "/etc", 1, 12, 14, "1", "x"],
        [2, "EP01_02f", 10, 12, 14, "4", "x"],
    ]
    pd.concat([rows, pd.DataFrame(extra, columns=rows.columns)]).to_excel(sheet, index=False)
    report = prepare_casme2(tmp_path / "raw", tmp_path / "out", align="none", size=24)
    outside = [line.split(":")[0] for line in report.bad_rows if "is not inside" in line]
    assert outside == ["CASME2-coding-20140508.xlsx line 7", "CASME2-coding-20140508.xlsx line 8"]
    images = [image for image in read_manifest(tmp_path / "out").images if image.startswith("images/sub02/")]
    assert sorted(images) == ["images/sub02/EP01_02f_apex12.jpg", "images/sub02/EP01_02f_apex12_2.jpg"]


def test_train_and_evaluate_write_apart_from_the_data_they_read(tmp_path, capsys):
    """A run folder inside (or holding) the dataset it reads is refused in one line, by --dry-run too."""
    from auformer.cli import main
    from auformer.data.synthetic import write_synthetic
    from media import tiny_checkpoint
    from test_train import write_tiny_preset

    root = write_synthetic(tmp_path / "data", num_images=24, size=32, seed=0, num_subjects=6, num_folds=3)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    checkpoint = str(tiny_checkpoint(tmp_path / "ckpt" / "tiny", [1, 2]))
    preset = write_tiny_preset(tmp_path / "tiny.yaml", train={"epochs": 1, "batch_size": 8}, data={"dataset": "mine"})
    for out in (root / "run", root, tmp_path):
        for dry in ([], ["--dry-run"]):
            capsys.readouterr()
            assert main(["train", "--preset", preset, "--data", str(root), "--out", str(out), *dry]) == 2
            printed = capsys.readouterr()
            assert "output folder" in printed.err + printed.out and str(out) in printed.err + printed.out
        assert main(["evaluate", checkpoint, "--preset", preset, "--data", str(root),
                     "--out", str(out)]) == 2  # fmt: skip
        assert "output folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_a_link_loop_is_an_os_error_wherever_a_path_is_resolved(tmp_path):
    """Before Python 3.13 ``Path.resolve`` raises RuntimeError on a link loop, a traceback in the CLI; every
    resolution in the package goes through `auformer.files.resolve`, which makes it the OSError it is."""
    from auformer.data.manifest import AUTable, write_manifest
    from auformer.files import resolve
    from auformer.model.backbone import weights_source

    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    loop = tmp_path / "a" / "x"
    table = AUTable(tmp_path, ["x.png"], ["s"], np.ones((1, 1)), [12])
    for call in (lambda: resolve(loop), lambda: weights_source(str(loop)), lambda: write_manifest(table, loop)):
        with pytest.raises(OSError, match="symbolic links"):
            call()
    package = Path(auformer.__file__).parent
    raw = [f"{p.relative_to(package)}:{n}" for p in package.rglob("*.py") if p.name != "files.py"
           for n, line in enumerate(p.read_text().splitlines(), 1) if ".resolve()" in line and "__file__" not in line]  # fmt: skip
    assert raw == [], f"Path.resolve() outside auformer.files.resolve: {raw}"
