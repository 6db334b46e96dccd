"""`auformer serve`: a local web page where a dropped photo or video gets its faces' AUs."""

from __future__ import annotations

import argparse

from auformer.cli.flags import CHECKPOINT_HELP, add_detector_flags, add_every, path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="a local web page: drop a photo or video, see each face's AUs, download the CSV",
        description="Start a local web page (Gradio; needs `pip install auformer[web]`) where a photo or video is "
        "dropped and each face is shown boxed with its AU bars, a video with its AU time series, and the table is a "
        "CSV download. Its Live tab analyses the browser's webcam as it streams (faces boxed with their ids, AU bars, "
        "fps and latency, the session's CSV); frames stay in memory and are never saved. Uploads and results go to a "
        "temporary folder deleted when the server stops. See docs/serve.md.",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        type=path_arg,
        help=f"{CHECKPOINT_HELP} (default: an untrained demo "
        "model on the packaged synthetic-face ViT, whose predictions mean nothing)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 makes the page reachable from other machines (default: %(default)s)",
    )
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=200,
        metavar="MB",
        help="largest file the page accepts, in megabytes (default: %(default)s)",
    )
    add_every(parser)
    add_detector_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.serve import run_serve

    run_serve(args)
