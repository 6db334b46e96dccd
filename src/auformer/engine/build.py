"""A run's parts built from its config: the data source and its splits, the backbone weights, the model, the loss.

Shared by the `Trainer`, ``auformer evaluate`` (`protocols.evaluate`) and ``--dry-run``, so every
command reads data and builds the model the same way.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from auformer.aus import au_columns
from auformer.config import Config
from auformer.data import (
    ArrayAUDataset,
    AUDataset,
    AUTable,
    cross_domain_split,
    equidistant_subsample,
    read_folds,
    read_manifest,
    split_fold,
)
from auformer.data.images import drop_unreadable
from auformer.errors import AUFormerError
from auformer.model.auformer import AUFormer, build_model
from auformer.model.backbone import resolve_weights


@dataclass
class Source:
    """A dataset in memory: its table, its folds and, for synthetic data, the pixels."""

    table: AUTable  # all samples; synthetic images are named "synthetic/<row>.png"
    folds: list[list[str]]  # test subjects per fold
    pixels: np.ndarray | None = None  # (M, S, S, 3) uint8 for in-memory data, None for files
    skipped: list[str] = dataclasses.field(default_factory=list)  # bad images dropped by data.skip_bad, one line each


@dataclass
class Splits:
    train: AUTable
    test: AUTable
    val: AUTable | None  # picks the best checkpoint when given
    full_train_size: int  # training samples before data.train_fraction subsampling


def load_source(config: Config, root: str | None = None) -> Source:
    """The preset's dataset: generated synthetic faces, or a prepared folder (manifest.csv + folds.json)."""
    data = config.data
    root = root or data.root
    if root is None:
        from auformer.data.synthetic import generate_synthetic, synthetic_folds
        from auformer.data.synthetic_appearance import SYNTHETIC_AUS

        faces = generate_synthetic(
            num_images=data.synthetic_images,
            size=data.synthetic_size,
            seed=data.synthetic_seed,
            num_subjects=data.synthetic_subjects,
        )
        subjects = [str(s) for s in faces.subjects]
        names = [f"synthetic/{row:05d}.png" for row in range(len(subjects))]
        table = AUTable(Path("."), names, subjects, faces.labels, list(SYNTHETIC_AUS), faces.intensities)
        return Source(table, synthetic_folds(subjects, k=data.synthetic_folds), faces.images)
    folds, _ = read_folds(root)
    if not data.skip_bad:
        return Source(read_manifest(root), folds)
    table, skipped = drop_unreadable(read_manifest(root, on_missing="keep"))
    return Source(table, folds, skipped=skipped)


def make_dataset(source: Source, table: AUTable, transform: Any, with_intensity: bool = False) -> Dataset:
    """Torch dataset over ``table`` rows (a subset of ``source.table``); intensities too when asked."""
    if source.pixels is None:
        return AUDataset(table, transform, with_intensity)
    rows = [int(Path(name).stem) for name in table.images]
    return ArrayAUDataset(source.pixels[rows], table.labels, transform, table.intensity, with_intensity)


def build_splits(config: Config, source: Source, target: Source | None = None) -> Splits:
    """Train/val/test tables of one run: fold ``data.fold`` held out (or, cross-domain, the whole target).

    ``data.val_fold`` moves one more fold out of training to select the best checkpoint;
    ``data.train_fraction`` < 1 subsamples the training list equidistantly.
    """
    data = config.data
    table = source.table
    if data.aus is not None:
        table = table.select_aus(data.aus)
    for name, fold in (("fold", data.fold), ("val_fold", data.val_fold)):
        if fold is not None and not 0 <= fold < len(source.folds):
            raise AUFormerError(f"config data.{name}: {fold} is not a fold of this dataset (0..{len(source.folds) - 1})")
    if target is None:
        train, test = split_fold(table, source.folds, data.fold)
    else:
        train_folds = tuple(k for k in range(len(source.folds)) if k != data.fold)
        train, test = cross_domain_split(table, source.folds, target.table, shared_aus(table, target.table), train_folds)
    val = None
    if data.val_fold is not None:
        val_subjects = source.folds[data.val_fold]
        val = train.subset(np.isin(train.subjects, val_subjects))
        train = train.subset(~np.isin(train.subjects, val_subjects))
    full_train_size = len(train)
    if data.train_fraction < 1:
        train = equidistant_subsample(train, data.train_fraction)
    if len(train) == 0:
        raise AUFormerError(f"fold {data.fold}: the training split is empty")
    return Splits(train, test, val, full_train_size)


def shared_aus(source: AUTable, target: AUTable) -> list[int]:
    """The AUs a cross-domain run scores: those of the source (after ``data.aus``) that the target annotates too,
    in the source's order (BP4D's 12 to Aff-Wild2's 12: 1, 2, 4, 6, 7, 10, 12, 15, 23, 24)."""
    aus = [au for au in source.aus if au in set(target.aus)]
    if not aus:
        raise AUFormerError(
            f"cross-domain: the source AUs ({', '.join(au_columns(source.aus))}) and the target AUs "
            f"({', '.join(au_columns(target.aus))}) have none in common"
        )
    return aus


def check_backbone_weights(config: Config, verbose: bool = True) -> str:
    """Resolve ``model.backbone_weights`` before any data is read: the file to load, or ``"random"``.

    ``hub`` is looked up in the Hugging Face cache, else downloaded; when neither works
    this raises the one-line error of ``auformer.model.weights``. ``random`` only warns.
    """
    model = config.model
    resolved = resolve_weights(model.backbone_weights, model.backbone)
    if resolved == "random" and verbose:
        print(
            f"warning: backbone_weights is 'random': {model.backbone} keeps its random init, frozen; the scores will "
            "not reflect a pre-trained backbone (recorded in metrics.json and the checkpoint JSON)",
            file=sys.stderr,
            flush=True,
        )
    return resolved


def model_from_config(config: Config, aus: list[int], backbone_weights: str) -> AUFormer:
    """The model of ``config.model`` for ``aus`` on ``backbone_weights`` (``"random"`` for a shape-only build):
    the one list of model settings, shared by the trainer and ``--dry-run``'s disk estimate."""
    m = config.model
    return build_model(
        len(aus), backbone=m.backbone, backbone_weights=backbone_weights, img_size=config.data.img_size,
        moke=m.moke, aus=aus, d=m.d, dilations=tuple(m.dilations), ca_size=m.ca_size, use_mrf=m.use_mrf,
        use_ca=m.use_ca, collaborate=m.collaborate, aux_head=m.aux_head, dropout=m.dropout, scale=m.scale,
        backbone_kwargs=m.backbone_kwargs or None, task=m.task, method=m.method, adapter_bottleneck=m.adapter_bottleneck,
        adapter_scale=m.adapter_scale, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha, lora_targets=m.lora_targets,
        vpt_prompts=m.vpt_prompts, drop_path=m.drop_path, recompute=m.recompute,
    )  # fmt: skip


def build_loss(config: Config) -> Any:
    """``loss(output, targets, rate) -> {"total", ...}`` from ``config.loss`` (the ablation switch).

    Defaults give the paper's objective: MDWA(main) + WDI(main) + MDWA(aux). Models with
    intensity heads add ``intensity_weight`` x (MSE(main) + aux_weight x MSE(aux)); an
    intensity-only model has only those terms.
    """
    from auformer import losses

    cfg = config.loss
    classify = losses.classification_loss(cfg.name, cfg.margin, tuple(cfg.gamma_bounds))

    def loss(
        output: Any, targets: torch.Tensor, rate: torch.Tensor, intensity: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        terms = {}
        if output.logits is not None:
            terms[cfg.name] = classify(output.logits, targets, rate)
            if cfg.wdi:
                terms["wdi"] = losses.wdi_loss(output.logits, targets, rate, eps=cfg.eps, reduction=cfg.wdi_reduction)
            if output.aux_logits is not None and cfg.aux_weight > 0:
                terms[f"{cfg.name}_aux"] = cfg.aux_weight * classify(output.aux_logits, targets, rate)
        if output.intensity is not None:
            terms["intensity"] = cfg.intensity_weight * losses.intensity_loss(output.intensity, intensity)
            if output.aux_intensity is not None and cfg.aux_weight > 0:
                terms["intensity_aux"] = (
                    cfg.intensity_weight * cfg.aux_weight * losses.intensity_loss(output.aux_intensity, intensity)
                )
        terms["total"] = sum(terms.values())
        return terms

    return loss
