"""Command-line entry point: the `auformer` parser and `main`, the one error boundary.

A thin argparse layer over the library, one module per command (`info`, `detect`, `prepare`,
`train`, ...; `protocols` holds cv, cross-domain and data-efficiency), each holding its parser
(``add(sub)``) and its runner (``run(args)``); a new command is a new module listed in `COMMANDS`;
flags shared by several commands are defined once in `auformer.cli.flags`. The runners import the
library lazily so that ``auformer --help`` stays fast. `main` is the one error boundary: user errors
(``AUFormerError``, a missing file's ``FileNotFoundError``, ``ConnectionError`` when the Hub
cannot be reached, and an ``OSError`` of the user's environment: no permission, a read-only
or full disk, a file where a folder is expected) are printed as one ``error: ...`` line
with exit status 2; any other exception is a bug and keeps its traceback. `main` also tunes
Python's garbage collector for a command's short life (`fewer_collections`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import gc
import sys
from collections.abc import Iterator

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


# Python's cyclic collector runs a pass every 700 new objects (2,000 from Python 3.13), and the older generations
# every 10 passes of the younger one. Importing torch, torchvision (which pulls in torch._dynamo) and timm creates about
# 430,000 objects that live until exit, so start-up paid ~0.5 s of passes that free nothing, and exit another
# ~0.7 s for the final collection (measured on `auformer detect`: docs/performance.md). A larger first
# threshold keeps the collector for real garbage (cycles still go every 50,000 new objects).
GC_THRESHOLD = (50_000, 20, 10)


@functools.cache  # once, however many times `main` runs in one process
def _freeze_at_exit() -> None:
    atexit.register(gc.freeze)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Collect cycles less often while a command runs (`GC_THRESHOLD`), and skip the collector at exit.

    At exit every object still alive is frozen (``gc.freeze``): the interpreter's last collection then
    skips them, as it frees nothing a finished process needs; handlers registered with ``atexit`` after
    this one (torch's, a TensorBoard writer's) run before it. The thresholds are restored when the
    command returns, for callers that run `main` inside their own process.
    """
    _freeze_at_exit()
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLD)
    try:
        yield
    finally:
        gc.set_threshold(*before)


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
        with fewer_collections():
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
