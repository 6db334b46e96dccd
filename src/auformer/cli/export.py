"""`auformer export`: a checkpoint as one ONNX or TorchScript file, checked against PyTorch."""

from __future__ import annotations

import argparse

from auformer.cli.flags import HUB_CHECKPOINT_HELP, add_backbone_weights, add_choice, path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description="Write one self-contained model file (backbone + experts + head, fixed input size, free batch) "
        "mapping normalised images to AU probabilities, checked against PyTorch (1e-4), plus a JSON describing it.",
    )
    parser.add_argument("checkpoint", metavar="CKPT", type=path_arg, help=HUB_CHECKPOINT_HELP)
    add_choice(parser, "--format", ("onnx", "torchscript"), "onnx", "output format")
    parser.add_argument(
        "--out", required=True, metavar="DIR", type=path_arg, help="folder for NAME.onnx / NAME.pt and its NAME.<ext>.json"
    )
    add_choice(
        parser,
        "--quantize",
        ("none", "int8"),
        "none",
        "int8: ONNX Runtime dynamic quantisation of the matrix products (smaller, faster on CPU; checked within 0.02)",
    )
    add_backbone_weights(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.export import run_export

    run_export(args)
