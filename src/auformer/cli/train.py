"""`auformer train`: train on one fold, or resume a killed run from its folder."""

from __future__ import annotations

import argparse
import os

from auformer.cli.flags import add_dry_run, add_run_flags, dry_run, path_arg, run_config
from auformer.errors import AUFormerError


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train AUFormer on one fold (default: the synthetic preset, CPU, minutes)",
        description="Train on one split (test fold data.fold) and score the test split. The run folder gets "
        "config.yaml, last/best checkpoints, train_state.pt (resume), metrics.json, per_au.csv/.md "
        "(and per_au_intensity.csv/.md when model.task is intensity or both), "
        "predictions.csv, metrics.csv/.jsonl, tensorboard/ and curves.png. Several processes: "
        "torchrun --nproc-per-node K -m auformer train ...; when torchrun restarts the workers (--max-restarts) "
        "of a run that has saved train_state.pt, they continue it (docs/training.md)",
    )
    add_run_flags(parser, "synthetic")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        type=path_arg,
        help="continue a killed run from its folder, with its own config.yaml (not combinable with --set/--data/--out)",
    )
    add_dry_run(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.engine import protocols

    if args.resume:
        if args.overrides or args.data or args.out or args.skip_bad:
            raise AUFormerError(
                "--resume continues the run with its own config.yaml and folder: drop --set, --data, --out and --skip-bad"
            )
        protocols.resume(args.resume)
        return
    config, out = run_config(args)
    if not dry_run(args, config, out):
        protocols.train(config, out, resume=_restarted_with_state(config.train.device, out))


def _restarted_with_state(device: str, out: str) -> bool:
    """Whether torchrun restarted this command's workers (``--max-restarts``, after a rank or node died)
    and ``out`` holds the run's resume point: then they continue it as ``--resume`` would, and
    `check_train_state` still refuses another run's state. A first launch, or a restart before the
    first resume point, starts afresh; without torchrun nothing changes."""
    from pathlib import Path

    from auformer.engine import checkpointing, distributed

    if "TORCHELASTIC_RESTART_COUNT" not in os.environ:
        return False
    info = distributed.setup(device)  # the group the trainer reuses
    if not (distributed.restarted(info) and (Path(out) / checkpointing.TRAIN_STATE).is_file()):
        return False
    if info.is_main:
        print(f"torchrun restarted the workers: continuing {out} from its {checkpointing.TRAIN_STATE}", flush=True)
    return True
