"""`auformer train`: train on one fold, or resume a killed run from its folder."""

from __future__ import annotations

import argparse

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
        "torchrun --nproc-per-node K -m auformer train ...",
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
        protocols.train(config, out)
