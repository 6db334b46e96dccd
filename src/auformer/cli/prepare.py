"""`auformer prepare`: a raw BP4D / DISFA / CASME II release, or labelled photos/videos, into a prepared dataset."""

from __future__ import annotations

import argparse

from auformer.cli.flags import add_choice, add_face_detector, path_arg


def _add_prepare_flags(parser: argparse.ArgumentParser) -> None:
    """--align / --face-detector / --size / --workers / --overwrite, shared by every `prepare` source."""
    add_choice(
        parser,
        "--align",
        ("auto", "none"),
        "auto",
        "auto: detect and align faces; none: images are already face crops, only resized",
    )
    add_face_detector(parser, "face detector for --align auto")
    parser.add_argument(
        "--size", type=int, default=256, metavar="PX", help="side of the square face crops in pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="K", help="worker processes (default: the CPU count, at most 8)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the prepared dataset OUT_DIR already holds (its images/, manifest.csv, folds.json and report)",
    )


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "prepare",
        help="convert a raw BP4D / DISFA / CASME II release, or your own labelled faces, into a prepared dataset folder",
        description="Read the official raw release (or a folder of photos/videos with a label CSV), align faces (or only "
        "resize with --align none) and write OUT_DIR/images/, manifest.csv, folds.json and prepare_report.json "
        "(frames written, missing, unreadable, without a face; unknown labels per AU). Layouts: docs/datasets.md.",
    )
    sources = parser.add_subparsers(dest="dataset", metavar="SOURCE", required=True)
    for name in ("bp4d", "disfa", "casme2"):
        release = sources.add_parser(
            name,
            help=f"the official {name.upper()} release (the protocol's folds, docs/datasets.md)",
            description=f"Convert the official raw {name.upper()} release; folds.json holds the protocol's folds.",
        )
        release.add_argument(
            "raw_dir", metavar="RAW_DIR", type=path_arg, help="folder of the raw release (label files and images/videos)"
        )
        release.add_argument("out_dir", metavar="OUT_DIR", type=path_arg, help="folder to write the prepared dataset to")
        _add_prepare_flags(release)
    folder = sources.add_parser(
        "folder", help="your own photos/videos with a label CSV (subject-exclusive folds)",
        description="INPUT holds photos and/or videos; LABELS.csv has columns file, frame (0-based, videos only), "
        "subject and AU columns (AU12, 12, AU12_c = occurrence 1/0; AU12_r, AU12_int = intensity 0-5; empty, -1 "
        "or 9 = unknown). Files without a face, missing or unreadable, and unusable rows go to prepare_report.json.",
    )  # fmt: skip
    folder.add_argument("raw_dir", metavar="INPUT", type=path_arg, help="folder the label file's paths are relative to")
    folder.add_argument("labels", metavar="LABELS.csv", type=path_arg, help="label file (one row per photo or video frame)")
    folder.add_argument("out_dir", metavar="OUT_DIR", type=path_arg, help="folder to write the prepared dataset to")
    folder.add_argument(
        "--folds", type=int, default=3, metavar="K", help="number of subject-exclusive folds (default: %(default)s)"
    )
    folder.add_argument(
        "--intensity-threshold",
        type=float,
        default=None,
        metavar="T",
        help="occurrence = intensity >= T for intensity columns (AU12_r, AU12_int), e.g. 2 (required with them)",
    )
    _add_prepare_flags(folder)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.data.converters import default_workers
    from auformer.data.converters.bp4d import prepare_bp4d
    from auformer.data.converters.casme2 import prepare_casme2
    from auformer.data.converters.disfa import prepare_disfa
    from auformer.data.converters.folder import prepare_folder

    options = dict(
        align=args.align,
        detector=args.face_detector,
        size=args.size,
        workers=default_workers() if args.workers is None else args.workers,
        overwrite=args.overwrite,
    )
    if args.dataset == "folder":
        prepare_folder(
            args.raw_dir, args.labels, args.out_dir, folds=args.folds, intensity_threshold=args.intensity_threshold, **options
        )
        return
    prepare = {"bp4d": prepare_bp4d, "disfa": prepare_disfa, "casme2": prepare_casme2}[args.dataset]
    prepare(args.raw_dir, args.out_dir, **options)
