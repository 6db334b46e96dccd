"""`auformer cv`, `cross-domain` and `data-efficiency`: the multi-run protocols, one table of commands."""

from __future__ import annotations

import argparse

from auformer.cli.flags import DATA_HELP, add_dry_run, add_run_flags, dry_run, path_arg, run_config

# name: (default preset, --data help, help, description), in the order `auformer --help` lists them.
PROTOCOLS = {
    "cv": (
        "synthetic",
        DATA_HELP,
        "cross-validation: train and test every fold, then the per-AU F1 table",
        "Run every fold of the preset (data.cv_folds, default all) into OUT/fold<k>/, then write "
        "the per-fold and mean per-AU F1 table (table.md), the mean metrics.json and runs.json.",
    ),
    "cross-domain": (
        "bp4d-to-disfa",
        "prepared folder of the source dataset (trained on)",
        "train on the other source folds, test on the whole target dataset (BP4D <-> DISFA, Aff-Wild2, CK+ ...)",
        "For each held-out source fold, train on the other source folds and test on all of the target "
        "dataset, on the AUs both annotate (named in the output; BP4D <-> DISFA: 1, 2, 4, 6, 12); then the "
        "per-run and mean F1 table.",
    ),
    "data-efficiency": (
        "bp4d-data-efficiency",
        DATA_HELP,
        "cross-validation on equidistant subsets of the training lists (10/1/0.5/0.1%%)",
        "For each rate of data.data_efficiency_rates, subsample every fold's training list "
        "equidistantly, keep the test folds, run cross-validation into OUT/rate<r>%/; then the F1 table per rate.",
    ),
}


def add(sub: argparse._SubParsersAction) -> None:
    for name, (default_preset, data_help, summary, description) in PROTOCOLS.items():
        parser = sub.add_parser(name, help=summary, description=description)
        add_run_flags(parser, default_preset, data_help)
        add_dry_run(parser)
        if name == "cross-domain":
            parser.add_argument(
                "--target",
                required=True,
                metavar="DIR",
                type=path_arg,
                help="prepared folder of the target dataset (tested whole)",
            )
        parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.engine import protocols

    config, out = run_config(args, target_root=getattr(args, "target", None))
    if dry_run(args, config, out):
        return
    protocol = protocols.data_efficiency if args.command == "data-efficiency" else protocols.cross_validate
    protocol(config, out)
