"""The training recipe: ``setup()`` builds data, model, optimiser in dependency order,
``train()`` runs the epochs, ``evaluate()`` scores a split (torchtune-recipe style).

Protocols are loops over this one recipe: ``cross_validate`` (every fold, also used
for cross-domain runs, where the preset names a target dataset) and
``data_efficiency`` (cross-validation per subsampling rate).

Resume is exact: the sampler order depends on (seed, epoch) only, the DataLoader has
its own seeded generator, and ``train_state.pt`` holds the RNG states after the last
optimiser step, so a resumed run skips the batches it already saw and continues with
the same random numbers (with ``data.num_workers: 0``; worker processes draw their
own augmentation randomness).
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from auformer.aus import CROSS_DOMAIN_AUS, au_columns
from auformer.config import Config, load_config, save_config
from auformer.data import (
    ArrayAUDataset,
    AUDataset,
    AUTable,
    build_transform,
    cross_domain_split,
    equidistant_subsample,
    occurrence_rate,
    read_folds,
    read_manifest,
    split_fold,
)
from auformer.data.images import drop_unreadable
from auformer.engine import checkpointing, distributed
from auformer.engine.logging import RunLogger, interactive
from auformer.engine.schedule import micro_batch_size, plan_run
from auformer.errors import AUFormerError
from auformer.files import atomic_path, atomic_write_text
from auformer.metrics import au_metrics, intensity_metrics, intensity_table_markdown, metrics_table_markdown
from auformer.model.auformer import AUFormer, build_model
from auformer.model.backbone import backbone_geometry, resolve_weights
from auformer.model.checkpoint import checkpoint_aus, load_adapter_weights, load_checkpoint, save_checkpoint
from auformer.model.heads import has_intensity

METRIC_KEYS = ("f1", "precision", "recall", "support")  # per-AU fields of metrics.json


# ---------------------------------------------------------------- data


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
        from auformer.data.synthetic import SYNTHETIC_AUS, generate_synthetic, synthetic_folds

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
        train, test = cross_domain_split(table, source.folds, target.table, data.aus or CROSS_DOMAIN_AUS, train_folds)
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


def check_backbone_weights(config: Config, verbose: bool = True) -> str:
    """Resolve ``model.backbone_weights`` before any data is read: the file to load, or ``"random"``.

    ``hub`` is looked up in the Hugging Face cache, else downloaded; when neither works
    this raises the one-line error of ``auformer.model.hub``. ``random`` only warns.
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


# ---------------------------------------------------------------- loss


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


# ---------------------------------------------------------------- results


def metrics_json(metrics: dict[str, Any], backbone_weights: str) -> dict[str, Any]:
    """``metrics.json`` content from `evaluate_model` metrics: ``{"mean_f1", "per_au": {"AU01": {f1, precision,
    recall, support}}}`` for occurrence, ``"intensity": intensity_metrics(...)`` for intensity (NaN written as null),
    and ``"backbone_weights"`` (hub, synthetic, random or the file): what the scores stand on; ``random`` means
    the adapters sat on a random frozen ViT."""
    result = {}
    if "mean_f1" in metrics:
        per_au = {au: {key: values[key] for key in METRIC_KEYS} for au, values in metrics["per_au"].items()}
        result = {"mean_f1": float(metrics["mean_f1"]), "per_au": per_au}
    if "intensity" in metrics:
        result["intensity"] = _nan_to_none(metrics["intensity"])
    result["backbone_weights"] = backbone_weights
    return result


def _nan_to_none(value: Any) -> Any:
    """NaN -> None, recursively (strict JSON has no NaN)."""
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    return None if isinstance(value, float) and math.isnan(value) else value


def main_score(metrics: dict[str, Any]) -> float:
    """The number that picks the best checkpoint and heads the log: mean F1, or mean ICC for intensity-only models."""
    return metrics["mean_f1"] if "mean_f1" in metrics else float(np.nan_to_num(metrics["intensity"]["mean_icc"], nan=-1.0))


def results_text(metrics: dict[str, Any]) -> str:
    """The tables printed after a run: per-AU F1 and/or per-AU ICC, r, MAE."""
    parts = []
    if "mean_f1" in metrics:
        parts.append(f"{metrics_table_markdown(metrics)}\nmean F1 {metrics['mean_f1']:.3f}")
    if "intensity" in metrics:
        scores = metrics["intensity"]
        parts.append(
            f"{intensity_table_markdown(scores)}\nintensity: mean ICC(3,1) {scores['mean_icc']:.3f}, "
            f"mean Pearson r {scores['mean_pearson']:.3f}, mean MAE {scores['mean_mae']:.3f}"
        )
    return "\n\n".join(parts)


def write_results(
    out_dir: Path, metrics: dict[str, Any], table: AUTable, predictions: dict[str, np.ndarray], backbone_weights: str
) -> None:
    """metrics.json, per_au.csv/.md (occurrence), per_au_intensity.csv/.md (intensity) and predictions.csv.

    predictions.csv holds the raw probabilities (``AU01_prob``) beside the labels
    (``AU01``, -1 unknown) so results can be re-scored at other thresholds, and for
    intensity models the predicted (``AU01_int_pred``) and annotated (``AU01_int``, -1 unknown) intensities.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics_json(metrics, backbone_weights), indent=2) + "\n")
    for name, scores, markdown in (
        ("per_au", metrics, metrics_table_markdown),
        ("per_au_intensity", metrics.get("intensity"), intensity_table_markdown),
    ):
        if scores is not None and "per_au" in scores:
            per_au = pd.DataFrame.from_dict(scores["per_au"], orient="index").rename_axis("au").reset_index()
            atomic_write_text(out_dir / f"{name}.csv", per_au.to_csv(index=False))
            atomic_write_text(out_dir / f"{name}.md", markdown(scores))
    columns = au_columns(table.aus)
    frame = pd.DataFrame({"image": table.images, "subject": table.subjects})
    if "probs" in predictions:
        frame[[f"{c}_prob" for c in columns]] = predictions["probs"]
    frame[columns] = table.labels.astype(int)
    if "intensity" in predictions:
        frame[[f"{c}_int_pred" for c in columns]] = predictions["intensity"]
        frame[[f"{c}_int" for c in columns]] = table.intensity if table.intensity is not None else -1.0
    with atomic_path(out_dir / "predictions.csv") as tmp:
        frame.to_csv(tmp, index=False, float_format="%.6f")


def mean_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over folds of each per-AU score (supports and known counts summed), same schema as one run."""
    result = {}
    if "mean_f1" in runs[0]:
        per_au = {}
        for au in runs[0]["per_au"]:
            rows = [run["per_au"][au] for run in runs]
            per_au[au] = {key: float(np.mean([row[key] for row in rows])) for key in METRIC_KEYS[:3]}
            per_au[au]["support"] = int(sum(row["support"] for row in rows))
        result = {"mean_f1": float(np.mean([run["mean_f1"] for run in runs])), "per_au": per_au}
    if "intensity" in runs[0]:
        folds = [run["intensity"] for run in runs]

        def mean(values: list[float | None]) -> float | None:  # folds where a score is undefined (null) are left out
            known = [v for v in values if v is not None]
            return float(np.mean(known)) if known else None

        per_au = {
            au: {key: mean([fold["per_au"][au][key] for fold in folds]) for key in ("icc", "pearson", "mae")}
            for au in folds[0]["per_au"]
        }
        for au in per_au:
            per_au[au]["known"] = int(sum(fold["per_au"][au]["known"] for fold in folds))
        result["intensity"] = {
            **{key: mean([fold[key] for fold in folds]) for key in ("mean_icc", "mean_pearson", "mean_mae")},
            "per_au": per_au,
        }
    result["backbone_weights"] = runs[0]["backbone_weights"]
    return result


def cv_table_markdown(runs: dict[str, dict[str, Any]]) -> str:
    """Per-AU F1 (%) of each run (fold, rate...) and their mean, as a Markdown table; with intensity
    heads, rows of mean ICC(3,1), Pearson r and MAE follow (per-AU intensity scores are in each run's files)."""
    names = list(runs)
    first = runs[names[0]]
    lines = ["| AU | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for au in first.get("per_au", {}):
        lines.append(f"| {au} | " + " | ".join(f"{100 * runs[n]['per_au'][au]['f1']:.1f}" for n in names) + " |")
    if "mean_f1" in first:
        lines.append("| **Avg** | " + " | ".join(f"**{100 * runs[n]['mean_f1']:.1f}**" for n in names) + " |")
    if "intensity" in first:
        for key, label in (("mean_icc", "ICC(3,1)"), ("mean_pearson", "Pearson r"), ("mean_mae", "MAE")):
            values = (runs[n]["intensity"][key] for n in names)
            lines.append(f"| **{label}** | " + " | ".join("n/a" if v is None else f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def report_skipped(out_dir: Path, skipped: list[str], is_main: bool) -> list[str]:
    """Write ``out_dir/skipped.json`` (count and one line per bad image, ``data.skip_bad``); returns ``skipped``.

    Nothing is printed here: `skipped_text` is shown once, at the end of the run.
    """
    if skipped and is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "skipped.json", json.dumps({"count": len(skipped), "skipped": skipped}, indent=2) + "\n")
    return skipped


def skipped_text(out_dir: Path, skipped: list[str]) -> str:
    """What a run prints about the bad images ``data.skip_bad`` dropped: one ``skipped:`` line each, then the count."""
    lines = [f"skipped: {line}" for line in skipped]
    lines.append(f"{len(skipped)} bad images skipped (listed in {out_dir / 'skipped.json'})")
    return "\n".join(lines)


# ---------------------------------------------------------------- the recipe


class Trainer:
    """One training run of ``config`` into ``run_dir`` (``resume=True`` continues a killed one)."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, verbose: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.verbose = verbose

    def setup(self) -> None:
        cfg, data = self.config, self.config.data
        if not self.resume and (self.run_dir / checkpointing.TRAIN_STATE).exists():
            raise AUFormerError(
                f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir} or pick another --out"
            )
        backbone_geometry(cfg.model.backbone, data.img_size, cfg.model.backbone_kwargs)  # before weights and data, as --dry-run
        self.dist = distributed.setup(cfg.train.device)
        check_backbone_weights(cfg, verbose=self.verbose and self.dist.is_main)
        if cfg.train.amp == "fp16" and self.dist.device.type != "cuda":
            raise AUFormerError("config train.amp: fp16 needs a CUDA device; use bf16 or none on CPU")
        self.micro_batch = micro_batch_size(cfg.train, self.dist.world_size)

        source = load_source(cfg)
        target = load_source(cfg, data.target_root) if data.target_root else None
        self.splits = build_splits(cfg, source, target)
        self.skipped = report_skipped(self.run_dir, source.skipped + (target.skipped if target else []), self.dist.is_main)
        self.aus = list(self.splits.train.aus)
        train_intensity = self.splits.train.intensity
        if has_intensity(cfg.model.task) and (train_intensity is None or not (train_intensity >= 0).any()):
            raise AUFormerError(
                f"config model.task: {cfg.model.task!r} needs intensity annotations, and the training split "
                "has none (manifest.csv AU12_int columns, see docs/intensity.md)"
            )
        rate = occurrence_rate(self.splits.train.labels)  # (N,)
        self.rate = torch.from_numpy(rate).to(self.dist.device)

        torch.manual_seed(cfg.train.seed)  # identical model init on every rank
        self.model = self._build_model().to(self.dist.device)
        mean, std = self.model.data_config["mean"], self.model.data_config["std"]
        train_tf = build_transform(True, data.img_size, mean, std, data.resize_size, data.color_jitter, data.hflip)
        test_tf = build_transform(False, data.img_size, mean, std, data.resize_size)
        intensity = has_intensity(cfg.model.task)
        self.train_set = make_dataset(source, self.splits.train, train_tf, intensity)
        self.test_set = make_dataset(target or source, self.splits.test, test_tf, intensity)
        self.val_set = make_dataset(source, self.splits.val, test_tf, intensity) if self.splits.val is not None else None
        self.sampler = distributed.sampler(self.train_set, self.dist, shuffle=True, seed=cfg.train.seed)

        # fused: one kernel over all parameter tensors (24 x N experts make thousands of small ones; the
        # default per-tensor loop on CPU cost a third of the synthetic model's step). Against foreach, the
        # other multi-tensor form: the same losses and F1, a step about 3x faster (docs/performance.md). It once
        # seemed to stop the tiny model learning: evaluation read stale fused expert weights (issue 17, fixed).
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay, fused=True
        )
        self.micro_per_epoch = math.ceil(len(self.sampler) / self.micro_batch)
        self.schedule = plan_run(
            cfg.train, len(self.splits.train), self.splits.full_train_size, self.micro_batch, self.dist.world_size
        )
        self.scheduler = self._build_scheduler()
        self.loss_fn = build_loss(cfg)
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=cfg.train.amp == "fp16")
        self.network = distributed.wrap(self.model, self.dist)  # self.model stays the plain module that gets saved
        if cfg.train.compile:
            self.network = torch.compile(self.network)  # compile after DDP wrapping, as PyTorch recommends

        self.epoch, self.micro_done, self.global_step, self.best_f1 = 0, 0, 0, -1.0
        self.loss_sum, self.loss_count = 0.0, 0  # running training loss of the current epoch
        state = checkpointing.load_train_state(self.run_dir) if self.resume else None
        if state is not None:
            self._load_state(state)  # checked to be this run's before any of it is used
        else:
            seed = cfg.train.seed + self.dist.rank  # different augmentation/dropout per rank
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, resume_epoch=self.epoch if state else None)
        if self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")

    def _build_model(self) -> torch.nn.Module:
        return model_from_config(self.config, self.aus, self.config.model.backbone_weights)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Experts at ``train.lr``, the linear heads (``head``, ``aux_head``, ``intensity``) at ``train.head_lr``.

        A linear head on frozen features often wants a larger step than the adapters.
        """
        train = self.config.train
        groups = {False: [], True: []}  # is a head -> parameters
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                groups[name.startswith(("head.", "aux_head.", "intensity."))].append(param)
        return [{"params": groups[False], "lr": train.lr}, {"params": groups[True], "lr": train.head_lr or train.lr}]

    def _build_scheduler(self) -> Any:
        """Per-step cosine decay after a linear warm-up (timm), stepped after every optimiser step."""
        from timm.scheduler import CosineLRScheduler

        train, total, warmup = self.config.train, self.schedule.total_steps, self.schedule.warmup_steps
        return CosineLRScheduler(
            self.optimizer, t_initial=total - warmup, lr_min=train.min_lr, warmup_t=warmup,
            warmup_lr_init=train.min_lr, warmup_prefix=True, t_in_epochs=False,
        )  # fmt: skip

    # ------------------------------------------------------------ state

    def _state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """What ``train_state.pt`` holds after the current optimiser step (``rngs``: every rank's RNG states)."""
        return {
            "model": self.model.learnable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "epoch": self.epoch,
            "micro_done": self.micro_done,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "global_step": self.global_step,
            "best_f1": self.best_f1,
            "world_size": self.dist.world_size,
            "seed": self.config.train.seed,
            "config": self.config.to_dict(),  # whose run this is: --resume refuses another run's state
            "aus": self.aus,
        }

    def _save_state(self) -> None:
        """Resume point after the current optimiser step: written atomically by rank 0."""
        rngs = distributed.gather_objects(checkpointing.rng_state(), self.dist)
        if self.dist.is_main:
            checkpointing.save_train_state(self.run_dir, self._state(rngs))
            save_checkpoint(self.model, self.run_dir / "last", extra=self._extra())
        distributed.barrier(self.dist)

    def _load_state(self, state: dict[str, Any]) -> None:
        own = self._state([checkpointing.rng_state()] * self.dist.world_size)
        path = self.run_dir / checkpointing.TRAIN_STATE
        checkpointing.check_train_state(state, path, own, self.optimizer, self.aus)  # this run's, before any use
        self.model.load_state_dict(state["model"], strict=False)  # keys and shapes checked
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.micro_done = state["epoch"], state["micro_done"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.global_step, self.best_f1 = state["global_step"], state["best_f1"]
        checkpointing.set_rng_state(state["rng"][self.dist.rank])
        self._print(f"resuming {self.run_dir} at epoch {self.epoch + 1}, batch {self.micro_done} (step {self.global_step})")

    def _extra(self) -> dict[str, Any]:
        """Stored in the checkpoint JSON: where the weights came from, and the test-time resize
        that detection must repeat (it can differ from the default 256/224 ratio)."""
        data = self.config.data
        return {
            "dataset": data.dataset, "preset": self.config.preset, "fold": data.fold,
            "train_samples": len(self.splits.train), "epochs_completed": self.epoch, "steps_completed": self.global_step,
            "img_size": data.img_size, "resize_size": data.resize_size, "backbone_weights": self.config.model.backbone_weights,
        }  # fmt: skip

    # ------------------------------------------------------------ loops

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs, then score the test split; returns its metrics (main process writes them)."""
        schedule = self.schedule
        test_metrics = None
        while self.epoch < schedule.epochs:
            loss, images_per_s, seconds = self._train_epoch()
            evaluate_now = schedule.evaluates_after(self.epoch)
            split_name, eval_metrics = None, None
            if evaluate_now:
                split_name = "val" if self.val_set is not None else "test"
                eval_metrics, predictions = self.evaluate(self.val_set or self.test_set)
                if split_name == "test":
                    test_metrics, test_predictions = eval_metrics, predictions
            has_f1 = eval_metrics is not None and "mean_f1" in eval_metrics
            record = {
                "epoch": self.epoch + 1, "train_loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": images_per_s, "eval_split": split_name, "seconds": seconds,
                "eval_mean_f1": eval_metrics["mean_f1"] if has_f1 else None,
            }  # fmt: skip
            self.logger.epoch(record, {au: v["f1"] for au, v in eval_metrics["per_au"].items()} if has_f1 else None)
            f1_text = f", {split_name} mean F1 {eval_metrics['mean_f1']:.3f}" if has_f1 else ""
            if eval_metrics is not None and "intensity" in eval_metrics:
                f1_text += f", {split_name} mean ICC {eval_metrics['intensity']['mean_icc']:.3f}"
            if evaluate_now or not schedule.by_steps:  # step budgets on tiny sets run thousands of short epochs
                self._print(
                    f"epoch {self.epoch + 1}/{schedule.epochs} (step {self.global_step}/{schedule.total_steps}): "
                    f"loss {loss:.4f}, {images_per_s:.0f} images/s{f1_text}"
                )
            improved = split_name == "val" and main_score(eval_metrics) > self.best_f1
            if improved:
                self.best_f1 = main_score(eval_metrics)
                if self.dist.is_main:
                    save_checkpoint(self.model, self.run_dir / "best", extra=self._extra())
            self.epoch, self.micro_done, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
            self._save_state()

        if self.val_set is not None:  # score the best-on-validation weights on the test split
            load_adapter_weights(self.model, self.run_dir / "best")
            test_metrics, test_predictions = self.evaluate(self.test_set)
        elif self.dist.is_main:  # no validation split: the final weights are the ones kept
            save_checkpoint(self.model, self.run_dir / "best", extra=self._extra())
        if test_metrics is None:  # resumed after the last epoch had finished
            test_metrics, test_predictions = self.evaluate(self.test_set)
        if self.dist.is_main:
            write_results(self.run_dir, test_metrics, self.splits.test, test_predictions, self.config.model.backbone_weights)
        self.logger.close()
        self._print(f"{results_text(test_metrics)}\noutputs written to {self.run_dir}")
        if self.skipped:
            self._print(skipped_text(self.run_dir, self.skipped))
        return metrics_json(test_metrics, self.config.model.backbone_weights)

    def _train_epoch(self) -> tuple[float, float, float]:
        """One epoch from ``self.micro_done`` on; returns (mean loss, images/s, seconds)."""
        cfg = self.config.train
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)[self.micro_done * self.micro_batch :]  # skip the batches seen before a resume
        generator = torch.Generator().manual_seed(cfg.seed + self.epoch)  # keeps the global RNG untouched
        loader = DataLoader(
            self.train_set, batch_size=self.micro_batch, sampler=order, num_workers=self.config.data.num_workers,
            generator=generator, pin_memory=self.dist.device.type == "cuda",
        )  # fmt: skip
        self.network.train()
        start, seen = time.perf_counter(), 0
        bar = self.logger.progress(loader, total=len(loader), desc=f"epoch {self.epoch + 1}/{self.schedule.epochs}")
        for images, targets, *intensity in bar:  # intensity: [(B, N)] for intensity models, else []
            images, targets = images.to(self.dist.device, non_blocking=True), targets.to(self.dist.device, non_blocking=True)
            intensity = intensity[0].to(self.dist.device, non_blocking=True) if intensity else None
            with torch.autocast(self.dist.device.type, dtype=self._amp_dtype(), enabled=cfg.amp != "none"):
                output = self.network(images)
            loss = self.loss_fn(output, targets, self.rate, intensity)["total"]
            value = loss.item()
            self._stop_if_not_finite(value)
            self.scaler.scale(loss / cfg.grad_accum).backward()
            self.micro_done += 1
            seen += len(images) * self.dist.world_size
            self.loss_sum, self.loss_count = self.loss_sum + value, self.loss_count + 1
            if self.micro_done % cfg.grad_accum == 0 or self.micro_done == self.micro_per_epoch:
                self._optimizer_step(value)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
                if self.global_step == self.schedule.total_steps:
                    break  # the step budget ends inside this epoch
                if self.global_step % cfg.checkpoint_every == 0 and self.micro_done < self.micro_per_epoch:
                    self._save_state()
        seconds = time.perf_counter() - start
        mean_loss = distributed.mean_across(self.loss_sum / max(self.loss_count, 1), self.dist)
        return mean_loss, seen / max(seconds, 1e-9), seconds

    def _stop_if_not_finite(self, loss: float) -> None:
        """Stop before the backward pass when any rank's loss is NaN or infinite: no NaN reaches the
        weights or a checkpoint, and every rank raises the same error in the same step (under DDP a
        rank that stopped alone would leave the others waiting in the gradient all-reduce)."""
        losses = distributed.values_across(loss, self.dist)  # (world_size,)
        bad = next((rank for rank, value in enumerate(losses) if not math.isfinite(value)), None)
        if bad is None:
            return
        where = f" on rank {bad} of {self.dist.world_size}" if self.dist.enabled else ""
        raise AUFormerError(
            f"{self.run_dir}: training loss is {losses[bad]} at step {self.global_step + 1} (epoch {self.epoch + 1}, "
            f"batch {self.micro_done + 1}){where}; stopped. {checkpointing.TRAIN_STATE} and last.safetensors hold the "
            "last checkpoint before it (try a lower train.lr or train.grad_clip)"
        )

    def _optimizer_step(self, loss: float) -> None:
        cfg = self.config.train
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.learnable_parameters(), cfg.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.scheduler.step_update(self.global_step)
        self.logger.step(self.global_step, loss, self.optimizer.param_groups[0]["lr"])

    def _amp_dtype(self) -> torch.dtype:
        return torch.float16 if self.config.train.amp == "fp16" else torch.bfloat16

    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Score ``dataset`` (sharded over ranks, gathered): (metrics, predictions), see `evaluate_model`."""
        return evaluate_model(self.network, dataset, self.aus, self.dist, self.config)

    def _print(self, text: str) -> None:
        if self.dist.is_main and self.verbose:
            print(text, flush=True)


@torch.no_grad()
def evaluate_model(
    network: torch.nn.Module, dataset: Dataset, aus: list[int], info: distributed.DistInfo, config: Config
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Predictions for every sample of ``dataset`` (each rank scores its shard) and their metrics.

    Returns (metrics, predictions): ``predictions["probs"]`` (M, N) and the ``au_metrics``
    keys for occurrence heads; ``predictions["intensity"]`` (M, N) and
    ``metrics["intensity"] = intensity_metrics(...)`` for intensity heads.
    """
    sampler = distributed.sampler(dataset, info, shuffle=False, seed=0)
    indices = np.array(list(sampler))  # (M_rank,) this rank's rows
    loader = DataLoader(
        dataset, batch_size=config.train.batch_size, sampler=indices.tolist(), num_workers=config.data.num_workers
    )
    network.eval()
    chunks: dict[str, list[np.ndarray]] = {"probs": [], "intensity": []}
    for images, *_ in tqdm(
        loader, desc="evaluate", disable=not (info.is_main and interactive()), leave=False, dynamic_ncols=True
    ):
        with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=config.train.amp != "none"):
            output = network(images.to(info.device))
        if output.logits is not None:
            chunks["probs"].append(torch.sigmoid(output.logits.float()).cpu().numpy())  # (B, N)
        if output.intensity is not None:
            chunks["intensity"].append(output.intensity.float().cpu().numpy())  # (B, N)
    predictions = {
        name: distributed.gather_rows(indices, np.concatenate(parts), info, total=len(dataset))  # (M, N)
        for name, parts in chunks.items()
        if parts
    }
    metrics = {}
    if "probs" in predictions:
        metrics = au_metrics(predictions["probs"], dataset.labels.numpy(), aus, threshold=config.train.threshold)
    if "intensity" in predictions:
        metrics["intensity"] = intensity_metrics(predictions["intensity"], dataset.intensity.numpy(), aus)
    return metrics, predictions


# ---------------------------------------------------------------- entry points


def train(config: Config, out_dir: str | Path, resume: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Train one split of ``config`` into ``out_dir``; returns the test ``metrics.json`` content."""
    trainer = Trainer(config, out_dir, resume=resume, verbose=verbose)
    trainer.setup()
    return trainer.train()


def train_once(config: Config, out_dir: str | Path, verbose: bool = True) -> dict[str, Any]:
    """``train``, unless ``out_dir`` already holds this config's run: then reuse or continue it.

    The resume mechanism of every grid (cv folds, ablation rows): a finished run
    (``metrics.json`` beside a ``config.yaml`` equal to ``config``) is read back, not
    rerun; a killed one (``train_state.pt``) continues where it stopped; a folder holding
    another config's run is refused, so results never mix.
    """
    out_dir = Path(out_dir)
    saved = out_dir / "config.yaml"
    if saved.is_file():
        wanted = yaml.safe_load(yaml.safe_dump(config.to_dict(), sort_keys=False))
        if yaml.safe_load(saved.read_text()) != wanted:
            raise AUFormerError(f"{out_dir} holds a run of another config ({saved} differs); pick another --out")
        if (out_dir / "metrics.json").is_file():
            if verbose:
                print(f"{out_dir}: finished before, reusing its metrics.json", flush=True)
            return json.loads((out_dir / "metrics.json").read_text())
        if (out_dir / checkpointing.TRAIN_STATE).is_file():
            return train(config, out_dir, resume=True, verbose=verbose)
    return train(config, out_dir, verbose=verbose)


def resume(run_dir: str | Path, verbose: bool = True) -> dict[str, Any]:
    """Continue a killed ``auformer train`` run from its folder (config.yaml + train_state.pt)."""
    run_dir = Path(run_dir)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"cannot resume: {config_file} does not exist")
    return train(load_config(str(config_file)), run_dir, resume=True, verbose=verbose)


def evaluate(
    checkpoint: str | Path, config: Config, out_dir: str | Path, table: AUTable | None = None, verbose: bool = True
) -> dict[str, Any]:
    """Score a checkpoint on ``table`` (e.g. from ME-GraphAU list files) or on the test split of ``config``
    (fold ``data.fold``, or the whole cross-domain target).

    The model's own AU list, input size and normalisation are used; the labels are
    reduced to the model's AUs. Writes the same result files as ``train``.
    """
    out_dir = Path(out_dir)
    info = distributed.setup(config.train.device)
    model = load_checkpoint(checkpoint).to(info.device)
    if model.task != config.model.task:
        raise AUFormerError(
            f"{checkpoint}: checkpoint was trained for task {model.task!r} but the config asks for "
            f"model.task={config.model.task!r} (pass --set model.task={model.task})"
        )
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, aus=checkpoint_aus(model, checkpoint)))
    if table is not None:  # list files: --skip-bad drops their bad rows here, as load_source does for a manifest
        table, skipped = drop_unreadable(table) if config.data.skip_bad else (table, [])
        source, test = Source(table, [], skipped=skipped), table.select_aus(model.aus)
    elif config.data.target_root:  # cross-domain: the whole target dataset
        source = load_source(config, config.data.target_root)
        test = source.table.select_aus(model.aus)
    else:
        source = load_source(config)
        test = build_splits(config, source).test
    size = model.config["img_size"]
    transform = build_transform(False, size, model.data_config["mean"], model.data_config["std"], config.data.resize_size)
    dataset = make_dataset(source, test, transform, has_intensity(model.task))
    metrics, predictions = evaluate_model(model, dataset, list(model.aus), info, config)
    if info.is_main:
        write_results(out_dir, metrics, test, predictions, model.config["backbone_weights"])
        skipped = report_skipped(out_dir, source.skipped, True)
        if verbose and skipped:
            print(skipped_text(out_dir, skipped), flush=True)
        if verbose:
            print(f"{results_text(metrics)}\noutputs written to {out_dir}", flush=True)
    return metrics_json(metrics, model.config["backbone_weights"])


def cross_validate(config: Config, out_dir: str | Path, verbose: bool = True) -> dict[str, Any]:
    """Train and test every fold of ``data.cv_folds`` (all by default) into ``out_dir/fold<k>``.

    Writes each fold's results, their mean (``metrics.json``, same schema) and
    ``cv_table.md`` (per-fold and mean per-AU F1). Cross-domain presets (with
    ``data.target_root``) hold out each source fold in turn and test on the target.
    Rerun into the same ``out_dir``, finished folds are reused and a killed one continues
    (`train_once`).
    """
    out_dir = Path(out_dir)
    check_backbone_weights(config, verbose=False)  # before the folds are read; each fold's run warns on random
    folds = config.data.cv_folds
    if folds is None:
        folds = range(len(read_folds(config.data.root)[0])) if config.data.root else range(config.data.synthetic_folds)
    runs = {}
    for fold in folds:
        fold_config = dataclasses.replace(config, data=dataclasses.replace(config.data, fold=fold))
        if verbose:
            print(f"== fold {fold} ==", flush=True)
        runs[f"fold{fold}"] = train_once(fold_config, out_dir / f"fold{fold}", verbose=verbose)
    mean = mean_metrics(list(runs.values()))
    _write_protocol({**runs, "mean": mean}, config, out_dir, mean, verbose)
    return mean


def data_efficiency(config: Config, out_dir: str | Path, verbose: bool = True) -> dict[str, Any]:
    """Cross-validation at every rate of ``data.data_efficiency_rates`` (training list subsampled, test unchanged)."""
    out_dir = Path(out_dir)
    runs = {}
    for rate in config.data.data_efficiency_rates:
        name = f"rate{100 * rate:g}%"
        rate_config = dataclasses.replace(config, data=dataclasses.replace(config.data, train_fraction=rate))
        if verbose:
            print(f"=== training on {100 * rate:g}% of the training list ===", flush=True)
        runs[name] = cross_validate(rate_config, out_dir / name, verbose=verbose)
    _write_protocol(runs, config, out_dir, None, verbose)
    return runs


def _write_protocol(
    runs: dict[str, dict[str, Any]], config: Config, out_dir: Path, mean: dict[str, Any] | None, verbose: bool
) -> None:
    """The Markdown table across ``runs`` (``table.md``), ``runs.json`` and, given a mean, its ``metrics.json``."""
    table = cv_table_markdown(runs)
    if not distributed.setup(config.train.device).is_main:
        return
    if mean is not None:
        atomic_write_text(out_dir / "metrics.json", json.dumps(mean, indent=2) + "\n")
    save_config(config, out_dir / "config.yaml")
    atomic_write_text(out_dir / "runs.json", json.dumps(runs, indent=2) + "\n")
    atomic_write_text(out_dir / "table.md", table + "\n")
    if verbose:
        print(f"{table}\n\noutputs written to {out_dir}", flush=True)
