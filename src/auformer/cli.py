"""Command-line interface: a thin argparse layer over the library.

Each sub-command has one ``_add_<command>`` function that declares its flags and
points ``func`` at a small runner; the runners import the library lazily so that
``auformer --help`` stays fast. User errors (``ValueError``, ``FileNotFoundError``)
are printed as one ``error: ...`` line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys


def _add_info(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "info",
        help="parameter and FLOP counts of an AUFormer model",
        description="Count learnable/total parameters and GFLOPs of AUFormer and of the plain ViT backbone.",
    )
    parser.add_argument("--backbone", default="vit_base_patch16_224", help="timm ViT name (default: %(default)s)")
    parser.add_argument("--num-aus", type=int, default=12, help="number of AUs N (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=224, help="input size in pixels (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    from auformer.model.profile import run_info

    run_info(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auformer",
        description="AUFormer: facial Action Unit detection with Mixture-of-Knowledge-Experts on a frozen ViT.",
    )
    from auformer import __version__

    parser.add_argument("--version", action="version", version=f"auformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_add_info,):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
