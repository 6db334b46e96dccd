"""The engine's entry points: ``train``, ``resume``, ``evaluate`` a checkpoint, and the protocols
looping over one training run: ``cross_validate`` (every fold, also used for cross-domain runs,
where the preset names a target dataset) and ``data_efficiency`` (cross-validation per
subsampling rate).

Every grid reruns into its folder safely: `train_once` reuses a finished run and continues
a killed one (the ablation grid, ``engine/ablation.py``, uses it too).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from auformer.config import Config, load_config, save_config
from auformer.data import AUTable, build_transform, read_folds
from auformer.data.images import drop_unreadable
from auformer.engine import checkpointing, distributed
from auformer.engine.build import Source, build_splits, check_backbone_weights, load_source, make_dataset
from auformer.engine.evaluation import evaluate_model
from auformer.engine.outputs import (
    cv_table_markdown,
    mean_metrics,
    metrics_json,
    report_skipped,
    results_text,
    skipped_text,
    write_results,
)
from auformer.engine.trainer import Trainer
from auformer.errors import AUFormerError
from auformer.files import atomic_write_text, check_apart
from auformer.model.checkpoint import checkpoint_aus, checkpoint_thresholds, open_checkpoint
from auformer.model.heads import has_intensity


def check_out_apart(config: Config, out_dir: str | Path) -> None:
    """A run's folder lies apart from the datasets it reads (``auformer.files.check_apart``)."""
    check_apart(out_dir, [root for root in (config.data.root, config.data.target_root) if root])


def train(config: Config, out_dir: str | Path, resume: bool = False, verbose: bool = True) -> dict[str, Any]:
    """Train one split of ``config`` into ``out_dir``; returns the test ``metrics.json`` content."""
    check_out_apart(config, out_dir)
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
    reduced to the model's AUs. Per-AU thresholds stored in the checkpoint (``train.threshold_search``)
    are scored beside ``train.threshold``. Writes the same result files as ``train``.
    """
    out_dir = Path(out_dir)
    check_out_apart(config, out_dir)
    info = distributed.setup(config.train.device)
    opened = open_checkpoint(checkpoint)
    model = opened.model.to(info.device)
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
    if verbose and info.is_main:
        what = "list files" if table is not None else config.data.target_root or config.data.root or "synthetic faces"
        fold = "" if table is not None or config.data.target_root else f", test fold {config.data.fold}"
        print(f"scoring {checkpoint} on {what}{fold}: {len(test)} images, {info.device}", flush=True)
    size = model.config["img_size"]
    transform = build_transform(False, size, model.data_config["mean"], model.data_config["std"], config.data.resize_size)
    dataset = make_dataset(source, test, transform, has_intensity(model.task))
    # per-AU thresholds the run tuned on its validation split (train.threshold_search): scored beside train.threshold
    metrics, predictions = evaluate_model(model, dataset, list(model.aus), info, config, checkpoint_thresholds(opened.meta))
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
