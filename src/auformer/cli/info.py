"""`auformer info`: parameter and FLOP counts of AUFormer or a comparison method."""

from __future__ import annotations

import argparse

from auformer.cli.flags import METHODS, add_choice, path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "info",
        help="parameter and FLOP counts of AUFormer or a comparison method",
        description="Count learnable/total parameters and GFLOPs of AUFormer (or --method) and of the plain ViT "
        "backbone; --compare counts every method (the paper's Fig. 1).",
    )
    parser.add_argument("--backbone", default="vit_base_patch16_224", help="timm ViT name (default: %(default)s)")
    parser.add_argument("--num-aus", type=int, default=12, help="number of AUs N (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=224, help="input size in pixels (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_choice(parser, "--moke", ("fused", "reference"), "fused", "expert-group implementation to count")
    parser.add_argument(
        "--backbone-kwargs",
        default=None,
        metavar="JSON",
        help="extra timm.create_model arguments as a JSON object, e.g. '{\"depth\": 6}'",
    )
    parser.add_argument(
        "--out",
        default=None,
        metavar="DIR",
        type=path_arg,
        help="also write DIR/info.json; with --compare the folder for compare.md/.json/.png "
        "(default: print only; with --compare ./info-compare)",
    )
    add_choice(parser, "--method", METHODS, "auformer", "method to count, with its default hyper-parameters")
    parser.add_argument(
        "--compare", action="store_true", help="count every method: the paper's Fig. 1 table (with its F1) and a bubble plot PNG"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.model.profile import run_info

    run_info(args)
