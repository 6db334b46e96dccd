"""``--dry-run``: check everything a real run needs and print what it would run, in seconds.

Checks, in the order a run would meet them: the model's shape and size
(`backbone_geometry`), backbone weights (file, Hugging Face cache, or a reachable hub),
device, batch split, data folder (manifest.csv, folds.json), every fold's splits with
positives of every AU, output folder writable, disk space for the checkpoints. Nothing
is trained and no weights are downloaded; the plan lists each run's samples, optimiser
steps, warm-up and evaluation points (the same ``plan_run`` as the trainer). Problems are
all listed, then the command fails with one line.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from auformer.aus import au_columns
from auformer.config import Config
from auformer.engine import distributed
from auformer.engine.protocols import check_out_apart
from auformer.engine.schedule import micro_batch_size, plan_run
from auformer.model.backbone import backbone_geometry

# Bytes a run keeps per learnable float32 value: last + best checkpoints, and train_state.pt
# with the model and AdamW's two moments; a random backbone rides in both checkpoints.
BYTES_PER_LEARNABLE = 4 * (2 + 3)
BYTES_PER_RANDOM_BACKBONE_VALUE = 4 * 2


def protocol_runs(config: Config, command: str, num_folds: int) -> list[tuple[str, Config]]:
    """The (name, config) of every training run a command makes: one fold, every fold, or rates x folds."""
    data = config.data
    folds = [data.fold] if command == "train" else (data.cv_folds if data.cv_folds is not None else range(num_folds))
    rates = data.data_efficiency_rates if command == "data-efficiency" else [data.train_fraction]
    runs = []
    for rate in rates:
        for fold in folds:
            name = f"fold{fold}" if command != "data-efficiency" else f"rate{100 * rate:g}%/fold{fold}"
            runs.append((name, dataclasses.replace(config, data=dataclasses.replace(data, fold=fold, train_fraction=rate))))
    return runs


def _weights(config: Config) -> str:
    """Where the backbone weights come from; raises the run's own one-line error when they cannot be had."""
    from auformer.model.backbone import resolve_weights

    model = config.model
    if model.backbone_weights != "hub":
        resolved = resolve_weights(model.backbone_weights, model.backbone)
        if resolved == "random":
            return f"random init of {model.backbone} (asked for by name; the run warns and records it)"
        return f"{model.backbone_weights} -> {resolved}"
    from auformer.model.weights import cached_weights, hub_repo, remote_size

    cached = cached_weights(model.backbone)
    if cached is not None:
        return f"hub: {model.backbone} in the Hugging Face cache ({cached})"
    size = remote_size(model.backbone)
    return f"hub: {hub_repo(model.backbone)} reachable, {size / 1e6:.0f} MB to download at the start of the run"


def _checkpoint_bytes(config: Config, aus: list[int]) -> int:
    """Disk a run's checkpoints take, from the model built on the meta device (nothing allocated, no weights read)."""
    from auformer.engine.build import model_from_config

    m = config.model
    with torch.device("meta"):
        model = model_from_config(config, aus, "random")
    size = BYTES_PER_LEARNABLE * sum(p.numel() for p in model.learnable_parameters())
    if m.backbone_weights == "random":  # the checkpoints then carry the backbone too
        size += BYTES_PER_RANDOM_BACKBONE_VALUE * sum(p.numel() for p in model.backbone.parameters())
    return size


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def dry_run(config: Config, out_dir: str | Path, command: str) -> list[str]:
    """Check a run of ``command`` (train, cv, cross-domain, data-efficiency) and print its plan; returns the problems."""
    from auformer.engine.build import build_splits, load_source, shared_aus

    start = time.perf_counter()
    problems: list[str] = []
    lines = [f"dry run of `auformer {command}` with preset {config.preset} (nothing is trained)"]

    def problem(name: str, text: str) -> None:
        problems.append(f"{name}: {text}")
        lines.append(f"  {name:<8} PROBLEM  {text}")

    def check(name: str, run: Callable[[], Any]) -> Any:
        """``run()``, or None with its one-line error listed as a problem."""
        try:
            return run()
        except (ValueError, FileNotFoundError, OSError) as error:
            problem(name, str(error))
            return None

    def ok(name: str, text: str) -> None:
        lines.append(f"  {name:<8} ok       {text}")

    model = config.model
    geometry = check("model", lambda: backbone_geometry(model.backbone, config.data.img_size, model.backbone_kwargs))
    if geometry:
        grid = "x".join(map(str, geometry.grid_size))
        ok("model", f"{model.backbone}: {geometry.depth} blocks of width {geometry.embed_dim}, {grid} patches, "
                    f"{geometry.values:,} backbone parameters")  # fmt: skip
    found = check("weights", lambda: _weights(config))
    if found:
        ok("weights", found)
    info = check("device", lambda: distributed.setup(config.train.device))
    micro_batch = None
    if info is not None:
        micro_batch = check("batch", lambda: micro_batch_size(config.train, info.world_size))
        if micro_batch is not None:
            ok(
                "device",
                f"{info.device}, {info.world_size} process(es), micro-batch {micro_batch} x {config.train.grad_accum} "
                f"accumulation = batch {config.train.batch_size}",
            )
    check("output", lambda: check_out_apart(config, out_dir))
    source = check("data", lambda: load_source(config))
    target = check("target", lambda: load_source(config, config.data.target_root)) if config.data.target_root else None
    plans, au_problems, checked_tests, without_positives = [], 0, set(), set()
    if source is not None:
        table = source.table
        ok(
            "data",
            f"{config.data.root or 'synthetic (generated in memory)'}: {len(table)} samples, "
            f"{len(set(table.subjects))} subjects, AUs {', '.join(au_columns(table.aus))}",
        )
        ok("folds", f"{len(source.folds)} folds of {', '.join(str(len(f)) for f in source.folds)} test subjects")
        if target is not None:
            scored = check("target", lambda: shared_aus(table.select_aus(config.data.aus or table.aus), target.table))
            if scored:
                ok("target", f"{config.data.target_root}: {len(target.table)} samples; AUs scored (in both): "
                             f"{', '.join(au_columns(scored))}")  # fmt: skip
        for name, run_config in protocol_runs(config, command, len(source.folds)):
            splits = check(name, lambda run_config=run_config: build_splits(run_config, source, target))
            if splits is None:
                continue
            for split, part in (("training", splits.train), ("test", splits.test)):
                if split == "test":
                    if run_config.data.fold in checked_tests:
                        continue  # data-efficiency rates share each fold's test split
                    checked_tests.add(run_config.data.fold)
                empty = [c for c, n in zip(au_columns(part.aus), (part.labels == 1).sum(0)) if n == 0]
                if empty and (split == "test" or run_config.data.train_fraction == 1):
                    au_problems += 1
                    without_positives.update(empty)
                    problem(name, f"no positive of {', '.join(empty)} in the {split} split (F1/occurrence rate meaningless)")
                elif empty:
                    lines.append(f"  {name:<8} note     the {split} subset has no positive of {', '.join(empty)}")
            if micro_batch is not None:
                plans.append(
                    (
                        name,
                        splits,
                        plan_run(run_config.train, len(splits.train), splits.full_train_size, micro_batch, info.world_size),
                    )
                )
        if plans and not au_problems:
            ok("AUs", f"every AU has positives in each test fold and each full training split ({len(plans)} run(s))")
        kept = [au for au in table.aus if au_columns([au])[0] not in without_positives]
        if without_positives and kept:
            lines.append(
                f"  {'AUs':<8} fix      the real run would go ahead, but the F1 of {', '.join(sorted(without_positives))} "
                f"would say nothing: leave them out with --set data.aus=[{','.join(map(str, kept))}]"
            )
    out = Path(out_dir)
    existing = _nearest_existing(out)
    if not existing.is_dir():
        problem("output", f"{out}: {existing} is a file, not a folder")
    elif not os.access(existing, os.W_OK):
        problem("output", f"{out}: cannot write in {existing}")
    elif plans and geometry:
        needed = len(plans) * _checkpoint_bytes(config, list(plans[0][1].train.aus))
        free = shutil.disk_usage(existing).free
        text = f"{out} is writable; {free / 1e9:.1f} GB free, about {needed / 1e9:.2f} GB needed for {len(plans)} run(s)' checkpoints"
        if free < needed:
            problem("disk", text)
        else:
            ok("output", text)
    if plans:
        lines.append("plan:")
        for name, splits, schedule in plans:
            val = f" / val {len(splits.val)}" if splits.val is not None else ""
            length = f"{schedule.epochs} epochs" + (", a step budget" if schedule.by_steps else "")
            points = schedule.eval_points()
            shown = ", ".join(map(str, points[:5])) + (f", ... ({len(points)} in all)" if len(points) > 5 else "")
            lines.append(
                f"  {name}: train {len(splits.train)}{val} / test {len(splits.test)} samples; "
                f"{schedule.steps_per_epoch} steps an epoch, {schedule.total_steps} steps ({length}), "
                f"warm-up {schedule.warmup_steps}, evaluation after step {shown}"
            )
    verdict = f"{len(problems)} problem(s)" if problems else "passed: drop --dry-run to train"
    lines.append(f"dry run {verdict} ({time.perf_counter() - start:.1f} s)")
    print("\n".join(lines), flush=True)
    return problems
