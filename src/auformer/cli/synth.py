"""`auformer synth`: the built-in synthetic AU dataset written as a prepared dataset folder."""

from __future__ import annotations

import argparse

from auformer.cli.flags import path_arg


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "synth",
        help="write the built-in synthetic AU dataset (drawn faces, 12 AUs) as a prepared dataset folder",
        description="Draw synthetic faces with 12 AUs and write OUT_DIR/images/*.png, manifest.csv (occurrence "
        "AU01... and 0-5 intensity AU01_int... columns), folds.json "
        "(subject-exclusive), synthetic.npz (clean labels, landmarks, latents) and synthetic.json. See docs/synthetic.md.",
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", type=path_arg, help="folder to write the dataset to (created if missing)")
    parser.add_argument("--num-images", type=int, default=3000, metavar="K", help="number of faces (default: %(default)s)")
    parser.add_argument(
        "--size", type=int, default=64, metavar="PX", help="image side in pixels, 16 to 1024 (default: %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, metavar="S", help="generator seed; same seed, same dataset (default: %(default)s)"
    )
    parser.add_argument("--num-subjects", type=int, default=60, metavar="N", help="number of identities (default: %(default)s)")
    parser.add_argument(
        "--label-noise",
        type=float,
        default=0.0,
        metavar="R",
        help="fraction of labels flipped in manifest.csv, 0 to 1 (default: %(default)s)",
    )
    parser.add_argument(
        "--folds", type=int, default=3, metavar="K", help="number of subject-exclusive folds (default: %(default)s)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from auformer.data.synthetic import write_synthetic

    out = write_synthetic(
        args.out_dir,
        num_images=args.num_images,
        size=args.size,
        seed=args.seed,
        num_subjects=args.num_subjects,
        label_noise=args.label_noise,
        num_folds=args.folds,
    )
    print(f"wrote {args.num_images} synthetic faces to {out} (manifest.csv, folds.json)")
