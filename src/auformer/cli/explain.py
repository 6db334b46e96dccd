"""`auformer explain`: Grad-CAM per expert and t-SNE of expert tokens (the paper's Figs. 5 and 6)."""

from __future__ import annotations

import argparse

from auformer.cli.flags import CHECKPOINT_HELP, add_backbone_weights, path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "explain",
        help="Grad-CAM per expert and t-SNE of expert tokens (the paper's Figs. 5 and 6)",
        description="For aligned face crops: OUT/gradcam/<image>.png, a Grad-CAM map per expert (aux head) for each AU "
        "predicted present, overlaid on the face; and OUT/tsne.png, a t-SNE of the last expert group's CLS tokens "
        "over all IMAGES coloured by expert (beside a second model's with --compare-checkpoint, e.g. one trained "
        "without the aux loss).",
    )
    parser.add_argument("checkpoint", metavar="CHECKPOINT", type=path_arg, help=CHECKPOINT_HELP)
    parser.add_argument(
        "images", nargs="+", metavar="IMAGES", type=path_arg, help="aligned face images or folders (searched recursively)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", type=path_arg, help="folder for gradcam/*.png and tsne.png")
    parser.add_argument(
        "--compare-checkpoint",
        default=None,
        metavar="CKPT",
        type=path_arg,
        help="second checkpoint for a t-SNE panel beside the first (default: none)",
    )
    parser.add_argument(
        "--titles",
        nargs="+",
        default=None,
        metavar="TITLE",
        help="t-SNE panel titles, one per checkpoint (default: the checkpoint paths)",
    )
    parser.add_argument(
        "--gradcam-images",
        type=int,
        default=8,
        metavar="K",
        help="Grad-CAM figures for the first K images (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        metavar="T",
        help="probability at which an AU counts as present (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="images per model batch (default: %(default)s)")
    add_backbone_weights(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.explain import run_explain

    run_explain(args)
