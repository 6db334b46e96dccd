"""CK+ and Aff-Wild2 converters on fake releases, checked against manifests written out by hand; bad and hostile input."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from auformer.aus import AFFWILD2_AUS
from auformer.data import read_folds, read_manifest
from auformer.data.converters.affwild2 import parse_abaw_labels, prepare_affwild2
from auformer.data.converters.ckplus import parse_facs, prepare_ckplus
from auformer.errors import AUFormerError
from fake_ckplus_affwild2 import ABAW_HEADER, facs_text, make_fake_affwild2, make_fake_ckplus
from hostile import snapshot

CK_HEADER = "image,subject,AU01,AU02,AU12,AU25,AU01_int,AU02_int,AU12_int,AU25_int"
ABAW_COLUMNS = "image,subject,AU01,AU02,AU04,AU06,AU07,AU10,AU12,AU15,AU23,AU24,AU25,AU26"


def _manifest(out) -> str:
    return (out / "manifest.csv").read_text()


def _report(out) -> dict:
    return json.loads((out / "prepare_report.json").read_text())


# ---------------------------------------------------------------- CK+


def test_ckplus_peak_frames_give_the_hand_written_manifest(tmp_path, capsys):
    raw = make_fake_ckplus(tmp_path / "raw")
    report = prepare_ckplus(raw, tmp_path / "out", min_positives=2, folds=2, align="none", size=32)
    # AUs coded in >= 2 sequences: 1, 2 (S005, S011), 12 (S005, S010, S022), 25 (S005, S010, S011).
    # Occurrence: coded = 1, not coded = 0. Intensity: 1-5 as coded; coded 0 = unknown (empty); absent = 0.
    assert _manifest(tmp_path / "out") == "\n".join(
        [
            CK_HEADER,
            "images/S005/001/S005_001_00000004.jpg,S005,1,1,1,1,,,3,",
            "images/S010/002/S010_002_00000003.jpg,S010,0,0,1,1,0,0,2,",
            "images/S011/001/S011_001_00000005.jpg,S011,1,1,0,1,4,3,0,",
            "images/S022/003/S022_003_00000004.jpg,S022,0,0,1,0,0,0,,0",
            "",
        ]
    )
    written = _report(tmp_path / "out")
    assert written["sequences_without_facs"] == ["S011/002"]  # listed, not guessed
    assert written["facs_positives"] == {"AU01": 2, "AU02": 2, "AU04": 1, "AU05": 1, "AU07": 1, "AU12": 3, "AU25": 3, "AU27": 1}
    assert written["aus_dropped"] == ["AU04", "AU05", "AU07", "AU27"]
    assert written["protocol"] == {"peak_frames": 1, "neutral_first": False, "min_positives": 2}
    assert report.written == 4 and report.bad_rows == [] and report.missing_image == []
    folds, aus = read_folds(tmp_path / "out")
    assert aus == [1, 2, 12, 25] and len(folds) == 2
    assert sorted(s for fold in folds for s in fold) == ["S005", "S010", "S011", "S022"]  # each subject in one fold
    table = read_manifest(tmp_path / "out")
    with Image.open(table.image_path(0)) as crop:
        assert crop.size == (32, 32)
    assert "sequences without a FACS file (not labelled): 1 (S011/002)" in capsys.readouterr().out


def test_ckplus_neutral_first_and_three_peak_frames(tmp_path):
    raw = make_fake_ckplus(tmp_path / "raw")
    prepare_ckplus(raw, tmp_path / "out", peak_frames=2, neutral_first=True, min_positives=2, folds=2, align="none", size=24)
    # Frames before the peak: the peak's occurrence, intensity unknown where present; the first frame: all absent.
    assert _manifest(tmp_path / "out") == "\n".join(
        [
            CK_HEADER,
            "images/S005/001/S005_001_00000001.jpg,S005,0,0,0,0,0,0,0,0",
            "images/S005/001/S005_001_00000003.jpg,S005,1,1,1,1,,,,",
            "images/S005/001/S005_001_00000004.jpg,S005,1,1,1,1,,,3,",
            "images/S010/002/S010_002_00000001.jpg,S010,0,0,0,0,0,0,0,0",
            "images/S010/002/S010_002_00000002.jpg,S010,0,0,1,1,0,0,,",
            "images/S010/002/S010_002_00000003.jpg,S010,0,0,1,1,0,0,2,",
            "images/S011/001/S011_001_00000001.jpg,S011,0,0,0,0,0,0,0,0",
            "images/S011/001/S011_001_00000004.jpg,S011,1,1,0,1,,,0,",
            "images/S011/001/S011_001_00000005.jpg,S011,1,1,0,1,4,3,0,",
            "images/S022/003/S022_003_00000001.jpg,S022,0,0,0,0,0,0,0,0",
            "images/S022/003/S022_003_00000003.jpg,S022,0,0,1,0,0,0,,0",
            "images/S022/003/S022_003_00000004.jpg,S022,0,0,1,0,0,0,,0",
            "",
        ]
    )
    # S010 has 3 frames: 3 peak frames take 1-3, so no separate neutral frame is added
    prepare_ckplus(raw, tmp_path / "out3", peak_frames=3, neutral_first=True, min_positives=2, folds=2, align="none", size=24)
    s010 = [row.split(",")[0] for row in _manifest(tmp_path / "out3").splitlines() if ",S010," in row]
    assert s010 == [f"images/S010/002/S010_002_0000000{n}.jpg" for n in (1, 2, 3)]


def test_ckplus_bad_facs_files_are_listed_and_missing_peaks_counted(tmp_path, capsys):
    raw = make_fake_ckplus(tmp_path / "raw")
    (raw / "FACS/S010/002/S010_002_00000003_facs.txt").write_text(facs_text([(12, 2)]) + "   2.5000000e+01   seven\n")
    (raw / "FACS/S022/003/S022_003_00000002_facs.txt").write_text(facs_text([(4, 1)]))  # two files for one sequence
    (raw / "cohn-kanade-images/S011/001/S011_001_00000005.png").unlink()  # the peak frame's image
    report = prepare_ckplus(raw, tmp_path / "out", min_positives=1, folds=2, align="none", size=24)
    assert report.bad_rows == [
        f"{raw}/FACS/S010/002/S010_002_00000003_facs.txt: line 2: '2.5000000e+01   seven' is not 'AU intensity' "
        "(two numbers, intensity 0-5)",
        f"{raw}/FACS/S022/003: 2 FACS files for one sequence (S022_003_00000002_facs.txt, S022_003_00000004_facs.txt)",
    ]
    assert report.missing_image == [f"{raw}/cohn-kanade-images/S011/001/S011_001_00000005.png"]
    assert read_manifest(tmp_path / "out").images == ["images/S005/001/S005_001_00000004.jpg"]
    with pytest.raises(AUFormerError, match=r"no AU is coded in 40 sequences \(the most: AU1, 2\); lower the minimum"):
        prepare_ckplus(raw, tmp_path / "out2", align="none")  # the default minimum, on 2 usable sequences
    with pytest.raises(AUFormerError, match=r"k must be between 2 and the number of subjects \(2\), got 10"):
        prepare_ckplus(raw, tmp_path / "out3", min_positives=1, align="none")  # 10 folds of 2 subjects


# ---------------------------------------------------------------- Aff-Wild2


AFFWILD2_MANIFEST = "\n".join(
    [
        ABAW_COLUMNS,
        "images/10-60-1280x720_left/00001.jpg,10-60-1280x720_left,0,0,1,0,0,0,0,0,0,0,0,0",
        "images/10-60-1280x720_left/00002.jpg,10-60-1280x720_left,0,0,1,0,0,1,0,0,0,0,0,0",
        "images/10-60-1280x720_right/00001.jpg,10-60-1280x720_right,0,0,0,0,0,0,1,0,0,0,1,1",
        "images/10-60-1280x720_right/00002.jpg,10-60-1280x720_right,,,,,,,,,,,,",
        "images/video1/00001.jpg,video1,1,0,0,0,0,0,0,0,0,0,0,0",
        "images/video1/00002.jpg,video1,,,,,,,,,,,,",
        "images/video1/00004.jpg,video1,0,1,0,0,0,0,0,0,0,0,0,1",
        "images/video2/00001.jpg,video2,1,1,0,0,0,0,0,0,0,0,0,0",
        "images/video2/00002.jpg,video2,0,0,0,0,0,0,0,1,1,1,0,0",
        "",
    ]
)


def test_affwild2_official_split_gives_the_hand_written_manifest(tmp_path, capsys):
    raw = make_fake_affwild2(tmp_path / "raw")
    report = prepare_affwild2(raw, tmp_path / "out", size=32)
    # -1 rows stay, with every label unknown (empty); video1's frame 3 has no crop; _left and _right are two subjects
    assert _manifest(tmp_path / "out") == AFFWILD2_MANIFEST
    assert report.align == "none"  # the released crops are aligned already
    assert report.missing_image == [f"{raw}/cropped_aligned/video1/00003.jpg"]
    assert report.frames_labelled == 10 and report.written == 9
    written = _report(tmp_path / "out")
    assert written["unknown_labels"] == {f"AU{au:02d}": 2 for au in AFFWILD2_AUS}
    assert written["unannotated_frames"] == {"Train_Set": 2, "Validation_Set": 0}
    assert written["frames_labelled_per_split"] == {"Train_Set": 8, "Validation_Set": 2}
    assert written["videos"] == {"Train_Set": 3, "Validation_Set": 1}
    assert read_folds(tmp_path / "out") == (
        [["video2"], ["10-60-1280x720_left", "10-60-1280x720_right", "video1"]],
        list(AFFWILD2_AUS),
    )
    folds_file = json.loads((tmp_path / "out/folds.json").read_text())
    assert folds_file["official_split"] == {"fold": 0, "train": "Train_Set", "test": "Validation_Set"}
    assert "fold 0 is the official split: train Train_Set (3 videos), test Validation_Set (1)" in capsys.readouterr().out


def test_affwild2_train_folds_and_dropping_unannotated_frames(tmp_path):
    raw = make_fake_affwild2(tmp_path / "raw")
    report = prepare_affwild2(raw, tmp_path / "out", folds=3, drop_unannotated=True, size=24)
    kept = [row for row in AFFWILD2_MANIFEST.splitlines(keepends=True) if ",,,," not in row]
    assert _manifest(tmp_path / "out") == "".join(kept)
    assert report.frames_labelled == 8 and _report(tmp_path / "out")["unannotated_frames"] == {
        "Train_Set": 2,
        "Validation_Set": 0,
    }
    folds, _ = read_folds(tmp_path / "out")
    assert folds[0] == ["video2"]  # fold 0 stays the official split
    assert sorted(map(tuple, folds[1:])) == [("10-60-1280x720_left",), ("10-60-1280x720_right",), ("video1",)]
    names = json.loads((tmp_path / "out/folds.json").read_text())["fold_names"]
    assert names == ["Validation_Set (official test split)", "Train_Set part 1", "Train_Set part 2", "Train_Set part 3"]


def test_affwild2_bad_label_files_are_listed_and_shared_videos_refused(tmp_path):
    raw = make_fake_affwild2(tmp_path / "raw")
    train = raw / "Annotations/AU_Detection_Challenge/Train_Set"
    (train / "video4.txt").write_text(f"{ABAW_HEADER}\n" + "0," * 11 + "0\n\n" + "0," * 11 + "1\n")  # a blank line inside
    (train / "10-60-1280x720_left.txt").write_text("AU1,AU2,AU4\n0,0,1\n")
    (train / "10-60-1280x720_right.txt").write_text(f"{ABAW_HEADER}\n" + "0," * 11 + "2\n")
    report = prepare_affwild2(raw, tmp_path / "out", size=24)
    assert report.bad_rows == [
        f"{train}/10-60-1280x720_left.txt: line 1: header 'AU1,AU2,AU4' does not name the 12 AUs "
        "AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26",
        f"{train}/10-60-1280x720_right.txt: line 2: '0,0,0,0,0,0,0,0,0,0,0,2' is not 12 codes 0, 1 or -1",
        f"{train}/video4.txt: line 3: '' is not 12 codes 0, 1 or -1",
    ]
    (train / "video1.txt").unlink()
    with pytest.raises(AUFormerError, match=r"Train_Set: no usable label file \(3 bad\)"):
        prepare_affwild2(raw, tmp_path / "out2", size=24)
    (train / "video2.txt").write_text(f"{ABAW_HEADER}\n" + "0," * 11 + "0\n")
    with pytest.raises(AUFormerError, match=r"video 'video2' is also in .*Train_Set/video2.txt"):
        prepare_affwild2(raw, tmp_path / "out3", size=24)


def test_affwild2_header_in_another_order_is_read_by_name():
    shuffled = "AU26,AU25,AU24,AU23,AU15,AU12,AU10,AU7,AU6,AU4,AU2,AU1"
    labels = parse_abaw_labels(f"{shuffled}\n1,0,0,0,0,0,0,0,0,0,0,-1\n\n", "x.txt")
    assert labels.tolist() == [[-1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]]  # AU1 last in the file, first here


# ---------------------------------------------------------------- hostile paths


def test_links_out_of_the_release_are_bad_rows_and_nothing_read_is_changed(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    Image.new("RGB", (28, 28), "red").save(victim / "face.jpg")
    (victim / "codes_facs.txt").write_text(facs_text([(12, 5)]))
    ck = make_fake_ckplus(tmp_path / "ck")
    frame = ck / "cohn-kanade-images/S005/001/S005_001_00000004.png"
    frame.unlink()
    frame.symlink_to(victim / "face.jpg")
    facs = ck / "FACS/S011/001/S011_001_00000005_facs.txt"
    facs.unlink()
    facs.symlink_to(victim / "codes_facs.txt")
    aw = make_fake_affwild2(tmp_path / "aw")
    crop = aw / "cropped_aligned/video2/00001.jpg"
    crop.unlink()
    crop.symlink_to(victim / "face.jpg")
    (aw / "cropped_aligned/video1").rename(tmp_path / "video1_crops")
    (aw / "cropped_aligned/video1").symlink_to(tmp_path / "video1_crops")
    before = snapshot(tmp_path)

    ck_report = prepare_ckplus(ck, tmp_path / "ck_out", min_positives=1, folds=2, align="none", size=24)
    assert [row.split(": path")[0] for row in ck_report.bad_rows] == ["S005/001: image", "FACS file"]
    assert all("is not inside" in row for row in ck_report.bad_rows)
    aw_report = prepare_affwild2(aw, tmp_path / "aw_out", size=24)
    train, validation = (f"{aw}/Annotations/AU_Detection_Challenge/{split}" for split in ("Train_Set", "Validation_Set"))
    assert [row.split(": path")[0] for row in aw_report.bad_rows] == [
        f"{train}/video1.txt: crop folder",
        f"{validation}/video2.txt: frame 1",
    ]
    images = read_manifest(tmp_path / "aw_out").images
    assert "images/video2/00001.jpg" not in images and not any(image.startswith("images/video1/") for image in images)
    after = snapshot(tmp_path)
    assert {name: digest for name, digest in after.items() if not name.startswith(("ck_out", "aw_out"))} == before


# ---------------------------------------------------------------- any text -> rows or one error naming file and line

PARSE = settings(max_examples=int(os.environ.get("AUFORMER_FUZZ_EXAMPLES", "200")), deadline=None,
                 suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
_FACS_TOKENS = st.sampled_from(["1.0000000e+00", "0.0000000e+00", "12", "5.5", "-1", "1e400", "nan", "99", "3", "x", "", "  "])
_ABAW_TOKENS = st.sampled_from(["0", "1", "-1", "2", "", " 1", "AU1", "nan"])


def _lines(tokens, separator: str):
    line = st.lists(tokens, max_size=14).map(separator.join)
    return st.lists(st.one_of(line, st.text(max_size=20)), max_size=6).map("\n".join)


def _assert_rows_or_one_error(parse, text: str) -> None:
    try:
        parse(text, "labels.txt")
    except AUFormerError as error:
        assert str(error).startswith("labels.txt: line "), str(error)
        assert "\n" not in str(error)


@PARSE
@given(st.one_of(st.text(), _lines(_FACS_TOKENS, "   ")))
def test_facs_parser_gives_codes_or_one_error_naming_file_and_line(text):
    _assert_rows_or_one_error(parse_facs, text)


@PARSE
@given(st.one_of(st.text(), _lines(_ABAW_TOKENS, ",").map(lambda body: f"{ABAW_HEADER}\n{body}")))
def test_abaw_parser_gives_rows_or_one_error_naming_file_and_line(text):
    _assert_rows_or_one_error(parse_abaw_labels, text)
