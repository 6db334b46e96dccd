"""Evaluation protocols: literature folds, subject k-fold, cross-domain and data-efficiency splits.

Folds are lists of *test* subjects; fold ``k`` trains on every other fold. Fold indices
are 0-based in the library (the papers' "fold 1" is ``fold=0``).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import numpy as np

from auformer.aus import CROSS_DOMAIN_AUS, au_columns
from auformer.data.manifest import AUTable
from auformer.errors import AUFormerError

# Subject-exclusive 3-fold split of JAA-Net / ME-GraphAU (test subjects per fold).
BP4D_FOLDS: list[list[str]] = [
    "F004 F006 F007 F012 F014 F015 F017 F019 F021 M003 M006 M009 M015".split(),
    "F003 F005 F011 F013 F020 F022 M002 M005 M010 M011 M013 M016 M017 M018".split(),
    "F001 F002 F008 F009 F010 F016 F018 F023 M001 M004 M007 M008 M012 M014".split(),
]
DISFA_FOLDS: list[list[str]] = [
    "SN003 SN004 SN005 SN007 SN008 SN017 SN023 SN025 SN029".split(),
    "SN006 SN011 SN012 SN013 SN018 SN021 SN024 SN028 SN031".split(),
    "SN001 SN002 SN009 SN010 SN016 SN026 SN027 SN030 SN032".split(),
]


def _natural_key(text: str) -> list:
    """Sort key that puts sub2 before sub10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def casme2_folds(subjects: Sequence[str]) -> list[list[str]]:
    """Subject-exclusive 4 folds for CASME II: subjects in natural order, dealt round-robin.

    The rule (``sub01 -> fold 0, sub02 -> fold 1, ..., sub05 -> fold 0``) needs no seed
    and gives every fold a spread of subject ids; the paper does not publish its split.
    """
    ordered = sorted(set(subjects), key=_natural_key)
    if len(ordered) < 4:
        raise AUFormerError(f"CASME II 4-fold CV needs at least 4 subjects, got {len(ordered)}")
    return [ordered[k::4] for k in range(4)]


def subject_kfold(subjects: Sequence[str], k: int, seed: int = 0) -> list[list[str]]:
    """Subject-exclusive ``k`` folds of a generic dataset: shuffled subjects in ``k`` near-equal groups.

    ``subjects`` may repeat (one per sample, ``table.subjects``); folds balance the number
    of subjects (scikit-learn ``GroupKFold`` with shuffling). Deterministic by ``seed``.
    """
    unique = np.array(sorted(set(subjects), key=_natural_key))
    if not 2 <= k <= len(unique):
        raise AUFormerError(f"k must be between 2 and the number of subjects ({len(unique)}), got {k}")
    from sklearn.model_selection import GroupKFold  # lazy: scikit-learn takes 0.5 s to import; detect never needs it

    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [sorted(unique[test].tolist(), key=_natural_key) for _, test in splitter.split(unique, groups=unique)]


def split_fold(table: AUTable, folds: Sequence[Sequence[str]], fold: int) -> tuple[AUTable, AUTable]:
    """(train, test) of ``fold`` (0-based): test = that fold's subjects, train = the other folds.

    Subjects of the table that are in no fold are left out of both and reported with a
    warning (never silently trained on). A fold with no samples in the table is an error.
    """
    if not 0 <= fold < len(folds):
        raise AUFormerError(f"fold must be in 0..{len(folds) - 1} (0-based: the papers' fold 1 is 0), got {fold}")
    test_subjects = set(folds[fold])
    known = set().union(*map(set, folds))
    subjects = np.asarray(table.subjects)
    unassigned = sorted(set(table.subjects) - known, key=_natural_key)
    if unassigned:
        count = int(np.isin(subjects, unassigned).sum())
        shown = ", ".join(unassigned[:5]) + (", ..." if len(unassigned) > 5 else "")
        warnings.warn(f"{len(unassigned)} subjects in no fold ({shown}): {count} samples left out", stacklevel=2)
    is_test = np.isin(subjects, list(test_subjects))
    is_train = np.isin(subjects, list(known - test_subjects))
    if not is_test.any():
        raise AUFormerError(f"fold {fold} has no samples: none of its subjects {sorted(test_subjects)[:5]}... is in the table")
    return table.subset(is_train), table.subset(is_test)


def equidistant_subsample(table: AUTable, rate: float) -> AUTable:
    """Every ``1/rate``-th sample of the list (at least one): the paper's data-efficiency protocol."""
    if not 0 < rate <= 1:
        raise AUFormerError(f"subsampling rate must be in (0, 1], got {rate}")
    count = max(1, round(len(table) * rate))
    return table.subset(np.arange(count) * len(table) // count)


def occurrence_rate(labels: np.ndarray) -> np.ndarray:
    """Occurrence rate of each AU, ``(N,)``: positives / known labels (unknown ``-1`` excluded).

    An AU with no known label at all has no rate and raises; an AU that never occurs gets
    rate 0 (the loss's inverse-rate weights must handle or reject that).
    """
    labels = np.asarray(labels, dtype=np.float32)  # (M, N)
    known = (labels >= 0).sum(axis=0)  # (N,)
    if (known == 0).any():
        raise AUFormerError(f"AU columns {np.flatnonzero(known == 0).tolist()} have no known labels: no occurrence rate")
    return ((labels == 1).sum(axis=0) / known).astype(np.float32)


def cross_domain_split(
    source: AUTable,
    source_folds: Sequence[Sequence[str]],
    target: AUTable,
    aus: Sequence[int] = CROSS_DOMAIN_AUS,
    train_folds: tuple[int, ...] = (0, 1),
) -> tuple[AUTable, AUTable]:
    """(train, test) for cross-domain evaluation on the shared ``aus``.

    Train on source folds ``train_folds`` (default the papers' folds 1 and 2, i.e. the
    training split of fold 3); test on the whole target set.
    """
    train_subjects = {s for k in train_folds for s in source_folds[k]}
    train = source.subset(np.isin(source.subjects, list(train_subjects)))
    if len(train) == 0:
        raise AUFormerError(f"no source samples in folds {train_folds} (AUs {', '.join(au_columns(aus))})")
    return train.select_aus(aus), target.select_aus(aus)
