"""`auformer live`: AUs of a webcam, network stream or clip as it plays, in the terminal and as CSV rows."""

from __future__ import annotations

import argparse

from auformer.cli.flags import HUB_CHECKPOINT_HELP, add_choice, add_detector_flags, path_arg
from auformer.errors import AUFormerError

SMOOTHERS = ("one-euro", "ema", "none")  # auformer.detect.smoothing.SMOOTHERS (tested equal; no numpy import for --help)


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "live",
        help="live AUs of a webcam, stream or clip, in the terminal",
        description="Analyse a camera (0, /dev/video0), a network stream (rtsp://, http://...) or a video file as it "
        "plays: a table per face (identity, AUs present, top values, fps, latency) updates in the terminal. When the "
        "model is slower than the source, the newest frame wins and the others are dropped (counted), so latency "
        "stays bounded. Frames are never written; OUT gets live.json (counts, latency) and the CSV of --csv. "
        "See docs/live.md.",
    )
    parser.add_argument("--source", required=True, help="camera number (0), device (/dev/video0), stream URL or video file")
    parser.add_argument("--checkpoint", required=True, metavar="CKPT", type=path_arg, help=HUB_CHECKPOINT_HELP)
    parser.add_argument(
        "--out", default=None, metavar="DIR", type=path_arg, help="output folder (default: runs/live-<UTC timestamp>)"
    )
    parser.add_argument(
        "--csv",
        default=None,
        metavar="NAME",
        type=path_arg,
        help="also write the rows `auformer detect` would (same columns, smoothed values) to OUT/NAME, flushed as they come",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        metavar="S",
        help="stop after S seconds (default: until the source ends or Ctrl-C)",
    )
    parser.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="play a video file at its own frame rate, dropping frames the model has no time for, as a camera would; "
        "--no-realtime analyses every frame of a file as fast as it can (default: realtime)",
    )
    add_choice(
        parser,
        "--smooth",
        SMOOTHERS,
        "one-euro",
        "smoothing of each face's AU values over time, so that they do not flicker (none: raw per-frame values)",
    )
    parser.add_argument(
        "--detect-every",
        type=int,
        default=5,
        metavar="K",
        help="run the face detector on every K-th analysed frame and track the faces in between; 1 detects every "
        "frame (default: %(default)s)",
    )
    add_detector_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.detect.live import run_live

    if args.duration is not None and not args.duration > 0:
        raise AUFormerError(f"--duration must be positive, got {args.duration}")
    run_live(args)
