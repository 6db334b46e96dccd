"""`auformer ablation`: the paper's ablation grids (Tables 4, 5a-5d), every row cross-validated."""

from __future__ import annotations

import argparse

from auformer.cli.flags import add_run_flags, run_config


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ablation",
        help="the paper's ablation grids (Tables 4, 5a-5d): every row cross-validated, ours beside the paper's F1",
        description="Cross-validate each row of the table (a set of config overrides on top of --preset/--set) into "
        "OUT/<row>/fold<k>/, then write OUT/table<T>.md and .csv in the paper's layout with the paper's mean F1 "
        "beside ours. Rerun with the same --out to continue an interrupted grid: finished folds are reused, a "
        "killed fold resumes. Rows: docs/ablations.md.",
    )
    add_run_flags(parser, "bp4d")
    parser.add_argument(
        "--table",
        required=True,
        choices=("4", "5a", "5b", "5c", "5d"),
        help="4: components; 5a: adaptation module; 5b: MRF dilations; 5c: CA size; 5d: MDWA margin",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.engine.ablation import run_ablation

    config, out = run_config(args)
    run_ablation(config, args.table, out)
