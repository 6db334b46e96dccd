"""Property-based tests (hypothesis): every reader either returns the documented result or raises the project's
one-line error (AUFormerError, or FileNotFoundError for a missing file); nothing else escapes."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from auformer.aus import AU_NAMES, parse_au, parse_au_list
from auformer.data import (
    AUTable,
    read_folds,
    read_list_files,
    read_manifest,
    write_manifest,
)
from auformer.data.converters import read_frame_intensity
from auformer.data.converters.bp4d import read_occurrence_csv
from auformer.data.converters.casme2 import subject_folder
from auformer.data.converters.disfa import read_intensity_file
from auformer.errors import AUFormerError

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
AU_NUMBERS = st.sampled_from(sorted(AU_NAMES))
# Text made of what AU strings and CSV files are made of, so that near-misses are common.
SOUP = st.lists(st.sampled_from(list("AaUu0123456789 +,;/.-LRBTCcE\t\n\"'9x") + ["AU", "12", "\x00", "é"]), max_size=20).map(
    "".join
)


def _user_error(call, *args):
    """Run ``call``; a raised error must be the project's own and fit on one line."""
    try:
        return call(*args)
    except (AUFormerError, FileNotFoundError) as error:
        assert "\n" not in str(error), repr(str(error))
        return error


@FUZZ
@given(
    AU_NUMBERS,
    st.sampled_from(["AU{n}", "AU{n:02d}", "au {n}", "{n}", "{n:02d}", "R{n}", "L{n}", "AU{n}R", "{n}c", "{n}.0", " B{n} "]),
)
def test_parse_au_documented_forms(number, form):
    assert parse_au(form.format(n=number)) == number


@FUZZ
@given(st.lists(AU_NUMBERS, min_size=1, max_size=6, unique=True), st.sampled_from(["+", ",", " ", ";", "/", " + "]))
def test_parse_au_list_documented_forms(numbers, separator):
    assert parse_au_list(separator.join(f"AU{n}" for n in numbers)) == numbers
    assert (
        parse_au_list(separator.join(f"R{n}" for n in numbers) + separator + separator.join(f"L{n}" for n in numbers)) == numbers
    )


@FUZZ
@given(st.one_of(SOUP, st.text(max_size=20), st.integers(-5, 200), st.booleans()))
@example("1+2+4")
@example("AU99")
@example(True)
@example("١٢")  # non-ASCII digits
def test_au_parsers_parse_or_raise_one_line(text):
    for parser in (parse_au, parse_au_list):
        result = _user_error(parser, text)
        if isinstance(result, int) and not isinstance(result, Exception):
            assert result in AU_NAMES and not isinstance(result, bool)
        elif isinstance(result, list):
            assert all(au in AU_NAMES for au in result)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """One folder for every example of a test: each example overwrites the files it reads."""
    return tmp_path_factory.mktemp("fuzz")


def _write(folder: Path, text: str | bytes, name: str) -> Path:
    (folder / name).write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return folder / name


CELLS = st.sampled_from(
    ["", "1", "0", "-1", "1.0", "9", "x", "a.png", "s1", "AU01", "AU02", " AU04", "image", "subject", '"q,uoted"']
)
CSV_TEXT = st.lists(st.lists(CELLS, min_size=0, max_size=5).map(",".join), max_size=6).map("\n".join)


@FUZZ
@given(st.one_of(CSV_TEXT, SOUP, st.binary(max_size=40)))
@example("image,subject,AU01\na.png,s1,1\n")
@example(b"\xff\xfe\x00")
def test_read_manifest_parses_or_raises_one_line(folder, text):
    result = _user_error(read_manifest, _write(folder, text, "manifest.csv"), "keep")
    if isinstance(result, AUTable):
        assert result.labels.shape == (len(result.images), len(result.aus)) and len(result) > 0
        assert set(np.unique(result.labels)) <= {-1.0, 0.0, 1.0}


@FUZZ
@given(st.lists(st.tuples(st.text(alphabet="abc/._ -é,\"", min_size=1, max_size=8), st.text(alphabet="st12", min_size=1, max_size=3)),
                min_size=1, max_size=6, unique_by=lambda row: row[0].strip()),
       st.lists(AU_NUMBERS, min_size=1, max_size=4, unique=True), st.randoms())  # fmt: skip
def test_manifest_round_trip(folder, rows, aus, rng):
    rows = [(image.strip(), subject) for image, subject in rows]
    if any(not image for image, _ in rows):
        return
    labels = np.array([[rng.choice([1.0, 0.0, -1.0]) for _ in aus] for _ in rows], dtype=np.float32)
    table = AUTable(folder, [image for image, _ in rows], [subject for _, subject in rows], labels, aus)
    # A manifest may only name files inside its folder (no symbolic links here): "/x", "../x", "a/../.." are refused.
    escapes = [
        image
        for image, _ in rows
        if posixpath.normpath(image) in (".", "..") or posixpath.normpath(image).startswith(("/", "../"))
    ]
    try:
        written = write_manifest(table, folder)
    except AUFormerError as error:
        assert escapes and "is not inside" in str(error), (escapes, str(error))
        return
    assert not escapes
    back = read_manifest(written, on_missing="keep")
    assert back.images == table.images and back.subjects == table.subjects and back.aus == aus
    np.testing.assert_array_equal(back.labels, labels)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers(-3, 30) | st.text(alphabet="AU0124 s", max_size=5),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["folds", "aus", "test_subjects"]), inner, max_size=3),
                           max_leaves=12)  # fmt: skip


@FUZZ
@given(st.one_of(JSON_VALUES.map(json.dumps), SOUP))
@example('{"folds": [{"test_subjects": ["s1"]}, {"test_subjects": ["s1"]}], "aus": ["AU01"]}')
@example('{"folds": [], "aus": [true]}')
def test_read_folds_parses_or_raises_one_line(folder, text):
    result = _user_error(read_folds, _write(folder, text, "folds.json"))
    if isinstance(result, tuple):
        folds, aus = result
        assert all(isinstance(s, str) for fold in folds for s in fold) and all(au in AU_NAMES for au in aus)


LABEL_LINE = st.lists(st.sampled_from(["1", "0", "-1", "2", "x", "1.0", "nan", "inf", ""]), max_size=4).map(" ".join)


@FUZZ
@given(st.lists(LABEL_LINE, max_size=4), st.integers(0, 4))
def test_read_list_files_parses_or_raises_one_line(folder, lines, images):
    img_list = _write(folder, "".join(f"F001/{i}.jpg\n" for i in range(images)), "img.txt")
    result = _user_error(
        read_list_files, img_list, _write(folder, "\n".join(lines), "label.txt"), [1, 2, 4], img_list.parent, "keep"
    )
    if isinstance(result, AUTable):
        assert set(np.unique(result.labels)) <= {-1.0, 0.0, 1.0} and result.labels.shape == (images, 3)


BP4D_HEADER = "," + ",".join(str(n) for n in (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24))


@FUZZ
@given(st.one_of(st.lists(st.lists(st.sampled_from(["0", "1", "9", "2", "", "x", "12"]), min_size=12, max_size=14).map(",".join),
                          max_size=4).map(lambda rows: "\n".join([BP4D_HEADER, *rows])), CSV_TEXT, st.binary(max_size=30)))  # fmt: skip
def test_bp4d_occurrence_parser(folder, text):
    result = _user_error(read_occurrence_csv, _write(folder, text, "F001_T1.csv"))
    if isinstance(result, tuple):
        frames, labels = result
        assert labels.shape == (len(frames), 12) and set(np.unique(labels)) <= {-1.0, 0.0, 1.0}


@FUZZ
@given(st.one_of(st.lists(st.tuples(st.sampled_from(["1", "2", "x", ""]), st.sampled_from(["0", "3", "5", "6", "-1", "x"])).map(",".join),
                          max_size=4).map("\n".join), CSV_TEXT, st.binary(max_size=30)))  # fmt: skip
def test_disfa_intensity_parser(folder, text):
    result = _user_error(read_intensity_file, _write(folder, text, "SN001_au1.txt"))
    if isinstance(result, dict):
        assert all(0 <= value <= 5 for value in result.values())


@FUZZ
@given(
    st.one_of(
        st.lists(st.tuples(st.sampled_from(["1", "2", "x", "", "1.5", "-3"]), st.sampled_from(["0", "5", "6", "9", "-1", "2.0", "x"]))
                 .map(",".join), max_size=4).map("\n".join),
        CSV_TEXT, SOUP, st.binary(max_size=30),
    ),
    st.sampled_from([None, 9]),
)  # fmt: skip
@example(b"\xff\xfe\x00", 9)  # a binary BP4D AU_INT file once escaped as a UnicodeDecodeError traceback
def test_frame_intensity_parser(folder, text, unknown):
    """BP4D (unknown code 9) and DISFA (none) share one 'frame,intensity' reader: a non-empty dict of
    whole frame numbers and codes 0-5 (-1 for the unknown code), or a one-line error."""
    result = _user_error(read_frame_intensity, _write(folder, text, "labels.csv"), unknown)
    if isinstance(result, dict):
        allowed = {0.0, 1.0, 2.0, 3.0, 4.0, 5.0} | ({-1.0} if unknown is not None else set())
        assert result and set(result.values()) <= allowed
        assert all(isinstance(frame, int) and frame >= 0 for frame in result)


@FUZZ
@given(st.one_of(SOUP, st.integers(0, 40).map(str)))
@example("sub07")
@example("7.0")
def test_casme2_subject_parser(text):
    result = _user_error(subject_folder, text)
    if isinstance(result, str):
        assert result.startswith("sub") and result[3:].isdigit()
