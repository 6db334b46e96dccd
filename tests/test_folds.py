"""Protocol splits: literature folds, subject k-fold, CASME II folds, data efficiency, cross-domain."""

import numpy as np
import pytest

from auformer.data import (
    BP4D_FOLDS,
    DISFA_FOLDS,
    AUTable,
    casme2_folds,
    cross_domain_split,
    equidistant_subsample,
    occurrence_rate,
    split_fold,
    subject_kfold,
)


def _table(subjects: list[str], aus: list[int]) -> AUTable:
    labels = np.arange(len(subjects) * len(aus)).reshape(len(subjects), len(aus)) % 2
    return AUTable("/data", [f"{s}/{i}.jpg" for i, s in enumerate(subjects)], subjects, labels, aus)


def test_literature_folds_are_disjoint_and_complete():
    bp4d = [s for fold in BP4D_FOLDS for s in fold]
    assert len(bp4d) == len(set(bp4d)) == 41
    assert [len(f) for f in BP4D_FOLDS] == [13, 14, 14]
    assert BP4D_FOLDS[0][0] == "F004" and BP4D_FOLDS[2][-1] == "M014"
    disfa = [s for fold in DISFA_FOLDS for s in fold]
    assert len(disfa) == len(set(disfa)) == 27
    assert DISFA_FOLDS[1] == "SN006 SN011 SN012 SN013 SN018 SN021 SN024 SN028 SN031".split()


def test_split_fold_is_subject_exclusive_and_reports_unassigned():
    subjects = [s for fold in BP4D_FOLDS for s in fold for _ in range(2)] + ["X999"]
    table = _table(subjects, [1, 2])
    with pytest.warns(UserWarning, match="1 subjects in no fold .*1 samples left out"):
        train, test = split_fold(table, BP4D_FOLDS, 1)
    assert set(test.subjects) == set(BP4D_FOLDS[1]) and len(test) == 28
    assert set(train.subjects) == set(BP4D_FOLDS[0] + BP4D_FOLDS[2]) and len(train) == 54
    with pytest.raises(ValueError, match="0-based"):
        split_fold(table, BP4D_FOLDS, 3)
    with pytest.raises(ValueError, match="fold 0 has no samples"):
        split_fold(_table(["F001"], [1]), BP4D_FOLDS, 0)


def test_casme2_folds_round_robin_in_natural_order():
    subjects = [f"sub{i:02d}" for i in range(1, 27)] * 3
    folds = casme2_folds(subjects)
    assert folds[0][:3] == ["sub01", "sub05", "sub09"]
    assert [len(f) for f in folds] == [7, 7, 6, 6]
    assert casme2_folds(["s10", "s2", "s1", "s3"]) == [["s1"], ["s2"], ["s3"], ["s10"]]
    with pytest.raises(ValueError, match="at least 4 subjects"):
        casme2_folds(["a", "b", "c"])


def test_subject_kfold_partitions_deterministically():
    subjects = [f"p{i}" for i in range(10) for _ in range(i + 1)]
    folds = subject_kfold(subjects, 3, seed=0)
    assert sorted(s for f in folds for s in f) == sorted(set(subjects))
    assert sorted(len(f) for f in folds) == [3, 3, 4]
    assert subject_kfold(subjects, 3, seed=0) == folds
    assert subject_kfold(subjects, 3, seed=1) != folds
    with pytest.raises(ValueError, match="k must be between 2"):
        subject_kfold(["a", "b"], 3)


@pytest.mark.parametrize(
    ("size", "rate", "expected"),
    [(100, 0.1, list(range(0, 100, 10))), (1000, 0.001, [0]), (10, 0.0001, [0]), (7, 1.0, list(range(7))), (10, 0.25, [0, 5])],
)
def test_equidistant_subsample(size, rate, expected):
    table = _table([f"s{i}" for i in range(size)], [1])
    picked = equidistant_subsample(table, rate)
    assert [int(name.split("/")[1][:-4]) for name in picked.images] == expected


def test_equidistant_subsample_rejects_bad_rate():
    with pytest.raises(ValueError, match="rate"):
        equidistant_subsample(_table(["a"], [1]), 0)


def test_occurrence_rate_excludes_unknown():
    labels = np.array([[1, -1, 0], [0, -1, 0], [1, 1, -1], [-1, 0, 0]], dtype=np.float32)
    np.testing.assert_allclose(occurrence_rate(labels), [2 / 3, 1 / 2, 0.0])
    with pytest.raises(ValueError, match=r"\[1\] have no known labels"):
        occurrence_rate(np.array([[1, -1], [0, -1]]))


def test_cross_domain_split_trains_on_two_source_folds():
    source = _table([s for fold in BP4D_FOLDS for s in fold], [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24])
    target = _table([s for fold in DISFA_FOLDS for s in fold], [1, 2, 4, 6, 9, 12, 25, 26])
    train, test = cross_domain_split(source, BP4D_FOLDS, target)
    assert set(train.subjects) == set(BP4D_FOLDS[0] + BP4D_FOLDS[1])
    assert len(test) == 27 and train.aus == test.aus == [1, 2, 4, 6, 12]
    np.testing.assert_array_equal(test.labels[:, 4], target.labels[:, 5])  # AU12 column follows
