"""Datasets: the manifest format, protocols (folds), torch datasets, transforms and converters."""

from auformer.data.dataset import ArrayAUDataset, AUDataset
from auformer.data.folds import (
    BP4D_FOLDS,
    DISFA_FOLDS,
    casme2_folds,
    cross_domain_split,
    equidistant_subsample,
    occurrence_rate,
    split_fold,
    subject_kfold,
)
from auformer.data.manifest import AUTable, read_folds, read_list_files, read_manifest, write_folds, write_manifest
from auformer.data.transforms import build_transform

__all__ = [
    "AUDataset",
    "AUTable",
    "ArrayAUDataset",
    "BP4D_FOLDS",
    "DISFA_FOLDS",
    "build_transform",
    "casme2_folds",
    "cross_domain_split",
    "equidistant_subsample",
    "occurrence_rate",
    "read_folds",
    "read_list_files",
    "read_manifest",
    "split_fold",
    "subject_kfold",
    "write_folds",
    "write_manifest",
]
