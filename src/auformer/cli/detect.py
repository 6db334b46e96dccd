"""`auformer detect`: AUs of every face in photos, folders and videos, written as CSV tables."""

from __future__ import annotations

import argparse
import os

from auformer.cli.flags import HUB_CHECKPOINT_HELP, add_choice, add_detector_flags, add_every, path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "detect",
        help="detect AUs in photos, folders and videos",
        description="Find and align every face, then write AU probabilities (AU01) and occurrences (AU01_c) "
        "per face and frame: OUT/images.csv for photos, OUT/<video>.csv per video (written as it goes). Images over "
        "AUFORMER_MAX_PIXELS pixels (default 80 million), with a side under 8 pixels or one side over 20 times the "
        "other are refused as bad inputs; an animated image is read as its first frame.",
    )
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", type=path_arg, help="image files, video files or folders (searched recursively)"
    )
    parser.add_argument("--checkpoint", metavar="CKPT", type=path_arg, help=HUB_CHECKPOINT_HELP + " (required)")
    parser.add_argument(
        "--out", metavar="DIR", type=path_arg, help="folder for the CSV files (and plots/ with --plot) (required)"
    )
    parser.add_argument(
        "--list",
        metavar="FILE",
        type=path_arg,
        help="corpus mode: inputs listed in FILE, one path per line, or a .csv with a 'path' and an optional 'id' column "
        "(outputs named by id); paths relative to FILE's folder. Writes OUT/csv/<input>.csv and OUT/done/<input>.json "
        "per input; under torchrun the inputs are split between all ranks (docs/detect.md)",
    )
    parser.add_argument(
        "--merge",
        metavar="DIR",
        type=path_arg,
        help="join the finished per-input CSVs of a corpus run in DIR into DIR/detect.parquet (needs auformer[parquet])",
    )
    add_every(parser)
    parser.add_argument("--start", type=float, default=None, metavar="S", help="video start time in seconds (default: beginning)")
    parser.add_argument("--end", type=float, default=None, metavar="S", help="video end time in seconds (default: end)")
    add_choice(
        parser,
        "--format",
        ("auformer", "openface"),
        "auformer",
        "CSV column names: auformer (time_s, face_score) or OpenFace-style (timestamp, confidence)",
    )
    parser.add_argument(
        "--plot", action="store_true", help="also write OUT/plots: AU bars per face in photos, AU time series per video"
    )
    parser.add_argument("--batch-size", type=int, default=32, metavar="B", help="faces per model batch (default: %(default)s)")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable images and videos (counted, listed at the end and in OUT/detect.json) instead of stopping",
    )
    earlier = parser.add_mutually_exclusive_group()
    earlier.add_argument(
        "--resume",
        action="store_true",
        help="continue a killed run in the same OUT: keep its CSVs and go on after the last frame written in full "
        "(refused when its checkpoint, --format or columns differ, as OUT/detect.json records them)",
    )
    earlier.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in OUT (without it or --resume, a folder holding results is refused)",
    )
    parser.add_argument(
        "--detect-every",
        type=int,
        default=5,
        metavar="K",
        help="videos: run the face detector on every K-th analysed frame and track the faces in between; "
        "1 detects every frame (default: %(default)s)",
    )
    parser.add_argument(
        "--landmarks",
        action="store_true",
        help="add the 68 landmarks as x_0..x_67, y_0..y_67 (pixels, OpenFace's names; empty for --face-detector haar/none)",
    )
    parser.add_argument(
        "--pose",
        action="store_true",
        help="add head pose pose_Rx/Ry/Rz (radians: pitch, yaw, roll; a PnP fit of a generic 3D face to the landmarks)",
    )
    parser.add_argument(
        "--save-aligned",
        action="store_true",
        help="also write each face's aligned crop, as the model sees it, to OUT/aligned/<name>_frame<N>_face<K>.png "
        "(OpenFace's -simalign)",
    )
    add_choice(parser, "--amp", ("none", "bf16"), "none", "run the network under bfloat16 autocast on --device")
    add_detector_flags(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    """Plain detect in one process; corpus mode with --list or under torchrun (WORLD_SIZE > 1); or --merge."""
    from auformer.detect import detect_corpus, merge, run_detect
    from auformer.detect.runner import detector_options
    from auformer.errors import AUFormerError

    if args.merge is not None:
        merge(args.merge)
        return
    if args.checkpoint is None or args.out is None or not (args.inputs or args.list):
        raise AUFormerError("detect needs INPUT... (or --list FILE), --checkpoint and --out (or only --merge DIR)")
    if args.list is None and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        run_detect(args)
        return
    for flag, given in (("--plot", args.plot), ("--save-aligned", args.save_aligned)):
        if given:
            raise AUFormerError(f"{flag} is not available with --list or torchrun (one process over a few inputs has it)")
    detect_corpus(
        args.out,
        args.checkpoint,
        args.inputs,
        args.list,
        resume=args.resume,
        overwrite=args.overwrite,
        skip_bad=args.skip_bad,
        every=args.every,
        start=args.start,
        end=args.end,
        format=args.format,
        **detector_options(args),
    )
