"""`auformer prepare`: a raw BP4D / DISFA / CASME II / CK+ / Aff-Wild2 release, or labelled photos/videos, into a prepared dataset."""

from __future__ import annotations

import argparse

from auformer.cli.flags import add_choice, add_face_detector, path_arg

# The releases beyond the paper: name -> (help, description); their own flags follow below.
RELEASES = {
    "ckplus": (
        "the CK+ release: FACS-coded peak frames (subject-exclusive folds)",
        "Convert the CK+ release (cohn-kanade-images/, FACS/): each sequence's peak frame gets its coded AUs "
        "present and every other AU absent; sequences without a FACS file are listed in prepare_report.json.",
    ),
    "affwild2": (
        "the Aff-Wild2 AU track (ABAW layout): the official Train_Set / Validation_Set split",
        "Convert the ABAW AU track (Annotations/AU_Detection_Challenge/, cropped_aligned/): fold 0 of folds.json "
        "is the official split (train Train_Set, test Validation_Set); -1 rows stay unknown (masked) and are counted.",
    ),
}


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
        help="convert a raw BP4D / DISFA / CASME II / CK+ / Aff-Wild2 release, or your own labelled faces, into a prepared dataset folder",
        description="Read the official raw release (or a folder of photos/videos with a label CSV), align faces (or only "
        "resize with --align none) and write OUT_DIR/images/, manifest.csv, folds.json and prepare_report.json "
        "(frames written, missing, unreadable, without a face; unknown labels per AU). Layouts: docs/datasets.md.",
    )
    sources = parser.add_subparsers(dest="dataset", metavar="SOURCE", required=True)
    for name in ("bp4d", "disfa", "casme2"):
        _add_release(
            sources,
            name,
            f"the official {name.upper()} release (the protocol's folds, docs/datasets.md)",
            f"Convert the official raw {name.upper()} release; folds.json holds the protocol's folds.",
        )
    releases = {name: _add_release(sources, name, *texts) for name, texts in RELEASES.items()}
    _add_ckplus_flags(releases["ckplus"])
    _add_affwild2_flags(releases["affwild2"])
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


def _add_release(sources: argparse._SubParsersAction, name: str, help: str, description: str) -> argparse.ArgumentParser:
    release = sources.add_parser(name, help=help, description=description)
    release.add_argument(
        "raw_dir", metavar="RAW_DIR", type=path_arg, help="folder of the raw release (label files and images/videos)"
    )
    release.add_argument("out_dir", metavar="OUT_DIR", type=path_arg, help="folder to write the prepared dataset to")
    _add_prepare_flags(release)
    return release


def _add_ckplus_flags(ckplus: argparse.ArgumentParser) -> None:
    ckplus.add_argument(
        "--peak-frames", type=int, default=1, metavar="N",
        help="label the last N frames up to the FACS-coded peak (several papers use 3; default: %(default)s)",
    )  # fmt: skip
    ckplus.add_argument("--neutral-first", action="store_true", help="add each sequence's first frame with every AU absent")
    ckplus.add_argument(
        "--min-positives", type=int, default=None, metavar="M",
        help="keep the AUs coded in at least M sequences (default: 40, about 16 AUs on the full release)",
    )  # fmt: skip
    ckplus.add_argument("--folds", type=int, default=None, metavar="K", help="subject-exclusive folds (default: 10)")


def _add_affwild2_flags(affwild2: argparse.ArgumentParser) -> None:
    affwild2.set_defaults(align="none")  # the released crops are aligned already
    affwild2.add_argument(
        "--folds", type=int, default=None, metavar="K",
        help="add K subject-exclusive folds over Train_Set (fold 0 stays the official split)",
    )  # fmt: skip
    affwild2.add_argument(
        "--drop-unannotated", action="store_true", help="leave out frames whose 12 codes are all -1 (counted either way)"
    )


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
    if args.dataset == "ckplus":
        from auformer.data.converters.ckplus import prepare_ckplus

        given = {key: value for key in ("min_positives", "folds") if (value := getattr(args, key)) is not None}
        prepare_ckplus(
            args.raw_dir, args.out_dir, peak_frames=args.peak_frames, neutral_first=args.neutral_first, **given, **options
        )
        return
    if args.dataset == "affwild2":
        from auformer.data.converters.affwild2 import prepare_affwild2

        prepare_affwild2(args.raw_dir, args.out_dir, folds=args.folds, drop_unannotated=args.drop_unannotated, **options)
        return
    prepare = {"bp4d": prepare_bp4d, "disfa": prepare_disfa, "casme2": prepare_casme2}[args.dataset]
    prepare(args.raw_dir, args.out_dir, **options)
