"""`auformer evaluate`: score a checkpoint on a test fold, a whole prepared dataset or list files."""

from __future__ import annotations

import argparse

from auformer.cli.flags import HUB_CHECKPOINT_HELP, add_run_flags, path_arg, run_config


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score a checkpoint on the test split of a dataset",
        description="Score CHECKPOINT on the test fold of a preset's dataset and write metrics.json, per_au.csv/.md "
        "(per_au_intensity.csv/.md for intensity checkpoints) and predictions.csv. Without --preset, the config.yaml of the checkpoint's run folder is used.",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", type=path_arg, help=f"{HUB_CHECKPOINT_HELP}, e.g. runs/x/best")
    add_run_flags(
        parser,
        None,
        preset_default_help="the config.yaml of the checkpoint's run folder, else synthetic",
        out_default="runs/evaluate-<UTC timestamp>",
    )
    parser.add_argument(
        "--fold", type=int, default=None, metavar="K", help="test fold, 0-based (default: the config's data.fold)"
    )
    parser.add_argument(
        "--target",
        default=None,
        metavar="DIR",
        type=path_arg,
        help="score on the whole of this prepared dataset instead of a fold",
    )
    parser.add_argument(
        "--list",
        nargs=2,
        default=None,
        metavar=("IMG_LIST", "LABEL_LIST"),
        type=path_arg,
        help="score on ME-GraphAU list files instead (image paths; one 1/0/-1 per AU a line)",
    )
    parser.add_argument(
        "--list-aus",
        default=None,
        metavar="AUS",
        help="AUs of the label list's columns, e.g. 1,2,4,6 (default: the checkpoint's AUs)",
    )
    parser.add_argument(
        "--image-root",
        default=".",
        metavar="DIR",
        type=path_arg,
        help="folder the list's image paths are relative to (default: .)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        metavar="B",
        help="images per model batch (default: the config's train.batch_size; same as --set train.batch_size=B)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    import time

    from auformer.config import DEFAULT_PRESET
    from auformer.engine import protocols
    from auformer.model.checkpoint import resolve_checkpoint

    if args.preset is None:
        run_yaml = resolve_checkpoint(args.checkpoint).parent / "config.yaml"
        args.preset = str(run_yaml) if run_yaml.is_file() else DEFAULT_PRESET
    if args.batch_size is not None:
        args.overrides.append(f"train.batch_size={args.batch_size}")
    if args.out is None:
        args.out = f"runs/evaluate-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    config, out = run_config(args, fold=args.fold, target_root=args.target)
    table = None
    if args.list:
        from auformer.aus import parse_au_list
        from auformer.data import read_list_files
        from auformer.model.checkpoint import read_checkpoint_meta

        aus = parse_au_list(args.list_aus) if args.list_aus else read_checkpoint_meta(args.checkpoint)["aus"]
        table = read_list_files(args.list[0], args.list[1], aus, args.image_root, "keep" if args.skip_bad else "error")
    protocols.evaluate(args.checkpoint, config, out, table=table)
