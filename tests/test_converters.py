"""Converters on fake raw trees in the official layouts: counts, labels, masks, folds, reports, errors."""

import json

import numpy as np
import pytest

from auformer.aus import BP4D_AUS, BP4D_INTENSITY_AUS, CASME2_AUS, DISFA_CODED_AUS
from auformer.cli import main
from auformer.data import BP4D_FOLDS, DISFA_FOLDS, read_folds, read_manifest
from auformer.data.converters import read_frame_intensity
from auformer.data.converters.bp4d import prepare_bp4d, read_occurrence_csv
from auformer.data.converters.casme2 import prepare_casme2
from auformer.data.converters.disfa import prepare_disfa
from auformer.faces.detectors import BoxCrop, Face
from fake_raw import BP4D_SUBJECTS, make_fake_bp4d, make_fake_casme2, make_fake_disfa


class DarkMeansNoFace:
    """Stub detector: the whole image is a face unless it is dark."""

    name = "stub"
    box_crop = BoxCrop(scale=1.0, shift_y=0.0)

    def detect(self, image_rgb):
        height, width = image_rgb.shape[:2]
        return [] if image_rgb.mean() < 10 else [Face(box=(0.0, 0.0, float(width), float(height)), score=1.0, landmarks=None)]


def _check_manifest(out_dir, fake, aus, size):
    table = read_manifest(out_dir)
    assert table.aus == list(aus)
    assert sorted(table.images) == sorted(fake.labels)
    for index, (image, subject, row) in enumerate(zip(table.images, table.subjects, table.labels)):
        np.testing.assert_array_equal(row, fake.labels[image], err_msg=image)
        if fake.intensity:
            np.testing.assert_array_equal(table.intensity[index], fake.intensity[image], err_msg=image)
        assert image.split("/")[1] == subject
    assert (table.intensity is None) == (not fake.intensity)
    from PIL import Image

    with Image.open(table.image_path(0)) as first:
        assert first.size == (size, size)
    return table


def _report(out_dir):
    return json.loads((out_dir / "prepare_report.json").read_text())


def test_bp4d_all_subjects_with_missing_corrupt_and_unknown(tmp_path, capsys):
    fake = make_fake_bp4d(tmp_path / "raw", frames=2, zero_pad=False, missing=2, corrupt=1, faceless=1)
    assert {key.split("/")[1] for key in [*fake.labels, *fake.missing]} == set(BP4D_SUBJECTS)
    report = prepare_bp4d(tmp_path / "raw", tmp_path / "out", align="none", size=32)
    table = _check_manifest(tmp_path / "out", fake, BP4D_AUS, 32)
    assert len(table) == report.written == 41 * 2 - 3
    assert report.frames_labelled == 82
    assert [p.split("frame ")[-1] for p in report.missing_image] == ["640", "641"]
    assert len(report.unreadable_image) == 1 and report.no_face == []
    unknown = np.stack(list(fake.labels.values())) < 0
    assert _report(tmp_path / "out")["unknown_labels"] == {f"AU{au:02d}": int(n) for au, n in zip(BP4D_AUS, unknown.sum(0))}
    assert unknown.any()  # 9 codes became masked labels, not zeros
    assert read_folds(tmp_path / "out") == (BP4D_FOLDS, list(BP4D_AUS))
    assert "79 of 82 labelled frames written" in capsys.readouterr().out


def test_bp4d_auto_alignment_reports_frames_without_face(tmp_path):
    fake = make_fake_bp4d(tmp_path / "raw", subjects=("F001", "M099"), tasks=("T1", "T8"), frames=2, faceless=2)
    report = prepare_bp4d(tmp_path / "raw", tmp_path / "out", align="auto", detector=DarkMeansNoFace(), size=48)
    assert report.no_face == [str(tmp_path / "raw/2DFaces/F001/T1/0640.jpg"), str(tmp_path / "raw/2DFaces/F001/T1/0641.jpg")]
    for key in fake.faceless:
        del fake.labels[key]
    _check_manifest(tmp_path / "out", fake, BP4D_AUS, 48)
    assert report.detector == "stub" and report.written == 6
    assert report.subjects_in_no_fold == ["M099"]


def test_bp4d_bad_label_files(tmp_path):
    make_fake_bp4d(tmp_path, subjects=("F001",), frames=2)
    csv = tmp_path / "AUCoding/AU_OCC/F001_T1.csv"
    header = "Frame," + ",".join(map(str, BP4D_AUS))
    csv.write_text(f"{header}\n640,{','.join(['0'] * 12)}\n641,7,{','.join(['1'] * 11)}\n")
    with pytest.raises(ValueError, match=r"F001_T1.csv: line 3, AU1: invalid code '7'"):
        read_occurrence_csv(csv)
    csv.write_text("Frame,1,2\n640,0,1\n")
    with pytest.raises(ValueError, match=r"F001_T1.csv: no column for AU04"):
        prepare_bp4d(tmp_path, tmp_path / "out", align="none")


def test_bp4d_fera_intensity_codes(tmp_path):
    fake = make_fake_bp4d(tmp_path / "raw", subjects=("F001", "M001"), frames=4, intensity=True)
    report = prepare_bp4d(tmp_path / "raw", tmp_path / "out", align="none", size=24)
    table = _check_manifest(tmp_path / "out", fake, BP4D_AUS, 24)
    header = (tmp_path / "out/manifest.csv").read_text().splitlines()[0]
    assert header.endswith(",AU06_int,AU10_int,AU12_int,AU14_int,AU17_int")  # only the coded AUs get a column
    coded = [BP4D_AUS.index(au) for au in BP4D_INTENSITY_AUS]
    assert (np.delete(table.intensity, coded, axis=1) == -1).all()
    assert set(np.unique(table.intensity[:, coded])) <= {-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert report.intensity_known["AU17"] == 4  # F001's AU17 file is absent: only M001's 4 frames (no 9 drawn there)
    bad = tmp_path / "raw/AUCoding/AU_INT/AU12/F001_T1_AU12.csv"
    bad.write_text("640,3\n641,6\n")
    with pytest.raises(ValueError, match=r"F001_T1_AU12.csv: line 2: '641,6' is not 'frame,intensity' \(0-5, or 9 = unknown\)"):
        prepare_bp4d(tmp_path / "raw", tmp_path / "out2", align="none", size=24)


def test_disfa_intensity_rule_and_frames_past_video_end(tmp_path):
    fake = make_fake_disfa(tmp_path / "raw", frames=5, extra_label_frames=2)
    report = prepare_disfa(tmp_path / "raw", tmp_path / "out", align="none", size=32, workers=2)
    table = _check_manifest(tmp_path / "out", fake, DISFA_CODED_AUS, 32)
    assert len(table) == 15 and report.frames_labelled == 21
    assert sorted(report.missing_image) == sorted(
        str(tmp_path / f"raw/Videos_LeftCamera/LeftVideo{s}_comp.avi#{n}") for s in ("SN001", "SN003", "SN006") for n in (6, 7)
    )
    assert report.unknown_labels["AU09"] == 1 and sum(report.unknown_labels.values()) == 1
    assert report.intensity_known["AU09"] == 14 and report.intensity_known["AU20"] == 15  # all 12 AUs with 0-5 intensity
    assert (table.labels == np.where(table.intensity < 0, -1, table.intensity >= 2)).all()  # occurrence = intensity >= 2
    assert read_folds(tmp_path / "out")[0] == DISFA_FOLDS
    # the frames are the video's frames, in order: frame 1 differs from frame 2
    assert table.images[0] == "images/SN001/00001.jpg"
    from PIL import Image

    first, second = (np.asarray(Image.open(table.image_path(i)), dtype=float) for i in (0, 1))
    assert np.abs(first - second).mean() > 5


def test_disfa_bad_intensity_names_file_and_line(tmp_path):
    make_fake_disfa(tmp_path, subjects=("SN001",), frames=2)
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au4.txt").write_text("1,0\n2,x\n")
    with pytest.raises(ValueError, match=r"SN001_au4.txt: line 2: '2,x' is not 'frame,intensity 0-5'"):
        prepare_disfa(tmp_path, tmp_path / "out", align="none")
    (tmp_path / "ActionUnit_Labels/SN001/SN001_au4.txt").unlink()
    with pytest.raises(FileNotFoundError, match="SN001_au4.txt: DISFA label file missing"):
        prepare_disfa(tmp_path, tmp_path / "out", align="none")


def test_bp4d_and_disfa_intensity_files_follow_one_rule(tmp_path):
    """One reader for both: an optional header, blank lines skipped, codes 0-5 as written, 9 only where
    the dataset has it; DISFA's '2.0' and frame '1.5' (once read as 2 and frame 1) are refused."""
    path = tmp_path / "labels.csv"
    path.write_text("Frame,AU06\n1,3\n\n2,9\n10,0\n")
    assert read_frame_intensity(path, unknown=9) == {1: 3.0, 2: -1.0, 10: 0.0}
    with pytest.raises(ValueError, match=r"labels.csv: line 4: '2,9' is not 'frame,intensity 0-5'"):
        read_frame_intensity(path)
    for bad in ("1,2.0\n", "1.5,2\n", "1,-1\n", "1,2,3\n"):
        path.write_text("1,0\n" + bad)
        with pytest.raises(ValueError, match=r"labels.csv: line 2: "):
            read_frame_intensity(path)
    path.write_text("Frame,AU06\n\n")
    with pytest.raises(ValueError, match=r"labels.csv: not a readable 'frame,intensity' file \(no frame lines\)"):
        read_frame_intensity(path, unknown=9)


def test_casme2_apex_frames_au_strings_and_folds(tmp_path):
    fake = make_fake_casme2(tmp_path / "raw", subjects=5, clips=2)
    report = prepare_casme2(tmp_path / "raw", tmp_path / "out", align="none", size=32)
    table = _check_manifest(tmp_path / "out", fake, CASME2_AUS, 32)
    assert len(table) == 9 and report.frames_labelled == 10
    assert len(report.missing_image) == 1 and "sub01/EP01_01f apex 12" in report.missing_image[0]
    assert len(report.bad_rows) == fake.bad_rows == 1 and "line 12" in report.bad_rows[0]
    assert sum(report.unknown_labels.values()) == 0
    folds, aus = read_folds(tmp_path / "out")
    assert folds == [["sub01", "sub05"], ["sub02"], ["sub03"], ["sub04"]] and aus == list(CASME2_AUS)


def test_prepare_cli(tmp_path, capsys):
    make_fake_casme2(tmp_path / "raw", subjects=4, clips=1)
    out = tmp_path / "prepared"
    assert main(["prepare", "casme2", str(tmp_path / "raw"), str(out), "--align", "none", "--size", "24", "--workers", "1"]) == 0
    assert f"wrote {out / 'manifest.csv'}" in capsys.readouterr().out
    assert len(read_manifest(out)) == 3
    assert main(["prepare", "casme2", str(tmp_path / "nowhere"), str(out), "--align", "none"]) == 2
    assert "no CASME2-coding" in capsys.readouterr().err
