"""`auformer weights download`: fetch a timm tag's backbone weight file once, for offline nodes."""

from __future__ import annotations

import argparse

from auformer.cli.flags import path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "weights",
        help="download pre-trained backbone weights once, for offline compute nodes",
        description="Download a timm tag's weight file from the Hugging Face Hub into a folder (run it on a machine "
        "with a network), then train with --set model.backbone_weights=DIR/model.safetensors. See docs/training.md.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    download = actions.add_parser(
        "download",
        help="download TAG's weight file into --out",
        description="Download TAG's weight file (model.safetensors) into DIR and print its path.",
    )
    download.add_argument("tag", metavar="TAG", help="timm pretrained tag, e.g. vit_base_patch16_224.augreg_in1k")
    download.add_argument("--out", required=True, metavar="DIR", type=path_arg, help="folder to write the weight file to")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.model.weights import download_weights

    path = download_weights(args.tag, args.out)
    print(f"wrote {path}; train with --set model.backbone_weights={path}")
