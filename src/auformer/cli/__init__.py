"""Command-line entry point: the `auformer` parser and `main`, the one error boundary.

A thin argparse layer over the library, one module per command (`info`, `detect`, `prepare`,
`train`, ...; `protocols` holds cv, cross-domain and data-efficiency), each holding its parser
(``add(sub)``) and its runner (``run(args)``); a new command is a new module listed in `COMMANDS`;
flags shared by several commands are defined once in `auformer.cli.flags`. The runners import the
library lazily so that ``auformer --help`` stays fast. `main` is the one error boundary: user errors
(``AUFormerError``, a missing file's ``FileNotFoundError``, ``ConnectionError`` when the Hub
cannot be reached, and an ``OSError`` of the user's environment: no permission, a read-only
or full disk, a file where a folder is expected) are printed as one ``error: ...`` line
with exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from auformer.cli import (
    ablation,
    detect,
    evaluate,
    explain,
    export,
    info,
    live,
    prepare,
    pretrain_synthetic,
    protocols,
    push,
    serve,
    synth,
    train,
    weights,
)
from auformer.errors import AUFormerError, environment_problem, one_line

# One module per command (protocols: cv, cross-domain, data-efficiency), in the order `auformer --help` lists them.
COMMANDS = (
    info,
    detect,
    live,
    export,
    prepare,
    train,
    evaluate,
    protocols,
    synth,
    pretrain_synthetic,
    push,
    weights,
    ablation,
    explain,
    serve,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auformer",
        description="AUFormer: facial Action Unit detection with Mixture-of-Knowledge-Experts on a frozen ViT.",
    )
    from auformer import __version__

    parser.add_argument("--version", action="version", version=f"auformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (AUFormerError, ConnectionError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        problem = environment_problem(error)
        if problem is None:
            raise  # not the user's files or disk: a bug
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0
