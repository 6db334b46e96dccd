"""Command-line interface: a thin argparse layer over the library.

Each sub-command has one ``_add_<command>`` function that declares its flags and
points ``func`` at a small runner; the runners import the library lazily so that
``auformer --help`` stays fast. `main` is the one error boundary: user errors
(``AUFormerError``, a missing file's ``FileNotFoundError``, ``ConnectionError`` when the Hub
cannot be reached, and an ``OSError`` of the user's environment: no permission, a read-only
or full disk, a file where a folder is expected) are printed as one ``error: ...`` line
with exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys

from auformer.errors import AUFormerError, environment_problem, one_line

# The names `auformer.faces.detectors.get_detector` accepts (kept here so --help needs no OpenCV/dlib import).
FACE_DETECTORS = ("dlib", "haar", "none", "yunet", "auto")
DEFAULT_FACE_DETECTOR = "auto"  # auformer.faces.DEFAULT_DETECTOR, tested equal: yunet where installed, else dlib
# `auformer.model.petl.METHODS` (kept here so --help needs no torch import).
METHODS = ("auformer", "full-finetune", "linear", "adapter", "adaptformer", "lora", "vpt", "convpass")


def path_arg(text: str) -> str:
    """The argparse type of every file and folder argument: an empty name (``--out ""``) would
    silently mean the current folder, so it is refused with the usage line."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a path (empty)")
    return text


def _add_info(sub: argparse._SubParsersAction) -> None:
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
    parser.add_argument(
        "--moke",
        default="fused",
        choices=("fused", "reference"),
        help="expert-group implementation to count (default: %(default)s)",
    )
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
    parser.add_argument(
        "--method",
        default="auformer",
        choices=METHODS,
        help="method to count, with its default hyper-parameters (default: %(default)s)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="count every method: the paper's Fig. 1 table (with its F1) and a bubble plot PNG"
    )
    parser.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> None:
    from auformer.model.profile import run_info

    run_info(args)


def _add_explain(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "explain",
        help="Grad-CAM per expert and t-SNE of expert tokens (the paper's Figs. 5 and 6)",
        description="For aligned face crops: OUT/gradcam/<image>.png, a Grad-CAM map per expert (aux head) for each AU "
        "predicted present, overlaid on the face; and OUT/tsne.png, a t-SNE of the last expert group's CLS tokens "
        "over all IMAGES coloured by expert (beside a second model's with --compare-checkpoint, e.g. one trained "
        "without the aux loss).",
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", type=path_arg, help="AUFormer checkpoint (PATH, PATH.safetensors or PATH.json)"
    )
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
    _add_backbone_weights_flag(parser)
    parser.set_defaults(func=_run_explain)


def _run_explain(args: argparse.Namespace) -> None:
    from auformer.explain import run_explain

    run_explain(args)


def _add_backbone_weights_flag(parser: argparse.ArgumentParser) -> None:
    """--backbone-weights, shared by the commands that load a checkpoint for inference."""
    parser.add_argument(
        "--backbone-weights",
        default=None,
        metavar="FILE",
        type=path_arg,
        help="backbone weights file, if it moved since training (default: the one the checkpoint records)",
    )


def _add_detector_flags(parser: argparse.ArgumentParser) -> None:
    """The `Detector` settings, shared by detect and serve: face detector, thresholds, device, backbone file."""
    parser.add_argument(
        "--face-detector",
        default=DEFAULT_FACE_DETECTOR,
        choices=FACE_DETECTORS,
        help="face detector; auto = yunet where the yuface wheel is installed (Python 3.10/3.11), else dlib; "
        "'none' treats each image as an aligned face crop (default: %(default)s)",
    )
    parser.add_argument(
        "--threshold",
        nargs="+",
        default=None,
        metavar="T",
        help="occurrence threshold: one number for all AUs and/or AU=VALUE per AU, e.g. 0.5 AU12=0.4 (default: 0.5)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    _add_backbone_weights_flag(parser)


def _add_detect(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "detect",
        help="detect AUs in photos, folders and videos",
        description="Find and align every face, then write AU probabilities (AU01) and occurrences (AU01_c) "
        "per face and frame: OUT/images.csv for photos, OUT/<video>.csv per video (written as it goes). Images over "
        "AUFORMER_MAX_PIXELS pixels (default 80 million), with a side under 8 pixels or one side over 20 times the "
        "other are refused as bad inputs; an animated image is read as its first frame.",
    )
    parser.add_argument(
        "inputs", nargs="+", metavar="INPUT", type=path_arg, help="image files, video files or folders (searched recursively)"
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="CKPT",
        type=path_arg,
        help="AUFormer checkpoint (PATH, PATH.safetensors or PATH.json) or Hugging Face Hub repo id user/name[@revision]",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", type=path_arg, help="folder for the CSV files (and plots/ with --plot)"
    )
    parser.add_argument("--every", type=int, default=1, metavar="K", help="analyse every K-th video frame (default: %(default)s)")
    parser.add_argument("--start", type=float, default=None, metavar="S", help="video start time in seconds (default: beginning)")
    parser.add_argument("--end", type=float, default=None, metavar="S", help="video end time in seconds (default: end)")
    parser.add_argument(
        "--format",
        default="auformer",
        choices=("auformer", "openface"),
        help="CSV column names: auformer (time_s, face_score) or OpenFace-style (timestamp, confidence) (default: %(default)s)",
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
        "--amp",
        default="none",
        choices=("none", "bf16"),
        help="run the network under bfloat16 autocast on --device (default: %(default)s)",
    )
    _add_detector_flags(parser)
    parser.set_defaults(func=_run_detect)


def _run_detect(args: argparse.Namespace) -> None:
    from auformer.detect import run_detect

    run_detect(args)


def _add_export(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description="Write one self-contained model file (backbone + experts + head, fixed input size, free batch) "
        "mapping normalised images to AU probabilities, checked against PyTorch (1e-4), plus a JSON describing it.",
    )
    parser.add_argument(
        "checkpoint",
        metavar="CKPT",
        type=path_arg,
        help="AUFormer checkpoint (PATH, PATH.safetensors or PATH.json) or Hugging Face Hub repo id user/name[@revision]",
    )
    parser.add_argument("--format", default="onnx", choices=("onnx", "torchscript"), help="output format (default: %(default)s)")
    parser.add_argument(
        "--out", required=True, metavar="DIR", type=path_arg, help="folder for NAME.onnx / NAME.pt and its NAME.<ext>.json"
    )
    _add_backbone_weights_flag(parser)
    parser.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> None:
    from auformer.export import run_export

    run_export(args)


def _add_serve(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "serve",
        help="a local web page: drop a photo or video, see each face's AUs, download the CSV",
        description="Start a local web page (Gradio; needs `pip install auformer[web]`) where a photo or video is "
        "dropped and each face is shown boxed with its AU bars, a video with its AU time series, and the table is a "
        "CSV download. Uploads and results go to a temporary folder deleted when the server stops. See docs/serve.md.",
    )
    parser.add_argument(
        "--checkpoint",
        default=None,
        metavar="CKPT",
        type=path_arg,
        help="AUFormer checkpoint (PATH, PATH.safetensors or PATH.json) (default: an untrained demo "
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
    parser.add_argument("--every", type=int, default=1, metavar="K", help="analyse every K-th video frame (default: %(default)s)")
    _add_detector_flags(parser)
    parser.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> None:
    from auformer.serve import run_serve

    run_serve(args)


def _add_prepare_flags(parser: argparse.ArgumentParser) -> None:
    """--align / --face-detector / --size / --workers, shared by every `prepare` source."""
    parser.add_argument(
        "--align",
        default="auto",
        choices=("auto", "none"),
        help="auto: detect and align faces; none: images are already face crops, only resized (default: %(default)s)",
    )
    parser.add_argument(
        "--face-detector",
        default=DEFAULT_FACE_DETECTOR,
        choices=FACE_DETECTORS,
        help="face detector for --align auto (default: %(default)s)",
    )
    parser.add_argument(
        "--size", type=int, default=256, metavar="PX", help="side of the square face crops in pixels (default: %(default)s)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, metavar="K", help="worker processes (default: the CPU count, at most 8)"
    )


def _add_prepare(sub: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> None:
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
    )
    if args.dataset == "folder":
        prepare_folder(
            args.raw_dir, args.labels, args.out_dir, folds=args.folds, intensity_threshold=args.intensity_threshold, **options
        )
        return
    prepare = {"bp4d": prepare_bp4d, "disfa": prepare_disfa, "casme2": prepare_casme2}[args.dataset]
    prepare(args.raw_dir, args.out_dir, **options)


def _add_weights(sub: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=_run_weights)


def _run_weights(args: argparse.Namespace) -> None:
    from auformer.model.weights import download_weights

    path = download_weights(args.tag, args.out)
    print(f"wrote {path}; train with --set model.backbone_weights={path}")


def _add_synth(sub: argparse._SubParsersAction) -> None:
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
    parser.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> None:
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


def _add_pretrain_synthetic(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pretrain-synthetic",
        help="pre-train the small synthetic-face ViT that the synthetic preset freezes",
        description="Pre-train a small timm ViT on synthetic faces (landmark heatmaps and geometry regression, no AU "
        "labels), probe it, and write OUT/synthetic_vit.safetensors + synthetic_vit.json. The package ships the "
        "result of the defaults in auformer/assets. Unset flags take PretrainConfig's defaults. See docs/synthetic.md.",
    )
    parser.add_argument(
        "--out", required=True, metavar="DIR", type=path_arg, help="folder to write synthetic_vit.safetensors/.json to"
    )
    parser.add_argument("--seed", type=int, metavar="S", help="weight init and batch order seed (default: 0)")
    parser.add_argument("--epochs", type=int, metavar="E", help="passes over the faces (default: 4)")
    parser.add_argument("--num-images", type=int, metavar="K", help="pre-training faces (default: 8000)")
    parser.add_argument("--batch-size", type=int, metavar="B", help="faces per step (default: 64)")
    parser.add_argument("--lr", type=float, help="AdamW peak learning rate (default: 0.002)")
    parser.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps (quick checks; default: all epochs)")
    parser.add_argument("--no-validate", action="store_true", help="skip the linear-probe check against a random init")
    parser.set_defaults(func=_run_pretrain_synthetic)


def _run_pretrain_synthetic(args: argparse.Namespace) -> None:
    from auformer.engine.pretrain import PretrainConfig, run_pretrain

    flags = {
        "seed": args.seed,
        "epochs": args.epochs,
        "num_images": args.num_images,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "max_steps": args.max_steps,
    }
    config = PretrainConfig(**{name: value for name, value in flags.items() if value is not None})
    weights = run_pretrain(config, args.out, validate=not args.no_validate)
    print(f"wrote {weights} and {weights.with_suffix('.json')}")


def _add_run_flags(parser: argparse.ArgumentParser, default_preset: str, data_help: str) -> None:
    """--preset / --set / --data / --out, shared by the training and protocol commands."""
    from auformer.config import preset_names  # light: PyYAML only

    parser.add_argument(
        "--preset",
        default=default_preset,
        metavar="NAME|FILE.yaml",
        type=path_arg,
        help=f"experiment preset: {', '.join(preset_names())}, or a YAML file such as a run's config.yaml (default: %(default)s)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, YAML syntax, repeatable (e.g. --set train.epochs=1 --set data.aus=[1,2])",
    )
    parser.add_argument("--data", default=None, metavar="DIR", type=path_arg, help=data_help)
    parser.add_argument(
        "--out", default=None, metavar="DIR", type=path_arg, help="output folder (default: runs/<preset>-<UTC timestamp>)"
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="drop missing or undecodable images (each decoded once up front; listed at the end and "
        "in OUT/skipped.json) instead of stopping; same as --set data.skip_bad=true",
    )


def _add_dry_run_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check data, folds, AUs per fold, weights, device, output folder and disk space, print the "
        "plan (runs, steps, warm-up, evaluations) and stop without training",
    )


def _dry_run(args: argparse.Namespace, config, out: str) -> bool:
    """Run the dry run when asked; True when it did (failures raise one line)."""
    if not args.dry_run:
        return False
    from auformer.engine.dryrun import dry_run

    problems = dry_run(config, out, args.command)
    if problems:
        raise AUFormerError(f"dry run found {len(problems)} problem(s); first: {problems[0]}")
    return True


def _run_config(args: argparse.Namespace, **data_values: object):
    """The validated config of a command and its output folder."""
    import time
    from pathlib import Path

    from auformer.config import apply_values, load_config, validate

    config = load_config(args.preset, args.overrides, data_dir=args.data)
    extra = {key: value for key, value in data_values.items() if value is not None}
    if args.skip_bad:
        extra["skip_bad"] = True
    if extra:
        config = validate(apply_values({"data": extra}, config))
    out = args.out or f"runs/{Path(args.preset).stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return config, out


_DATA_HELP = "prepared dataset folder (manifest.csv + folds.json, see `auformer prepare`); required by real-data presets"


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train AUFormer on one fold (default: the synthetic preset, CPU, minutes)",
        description="Train on one split (test fold data.fold) and score the test split. The run folder gets "
        "config.yaml, last/best checkpoints, train_state.pt (resume), metrics.json, per_au.csv/.md "
        "(and per_au_intensity.csv/.md when model.task is intensity or both), "
        "predictions.csv, metrics.csv/.jsonl, tensorboard/ and curves.png. Several processes: "
        "torchrun --nproc-per-node K -m auformer train ...",
    )
    _add_run_flags(parser, "synthetic", _DATA_HELP)
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        type=path_arg,
        help="continue a killed run from its folder, with its own config.yaml (not combinable with --set/--data/--out)",
    )
    _add_dry_run_flag(parser)
    parser.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    from auformer.engine import protocols as trainer

    if args.resume:
        if args.overrides or args.data or args.out or args.skip_bad:
            raise AUFormerError(
                "--resume continues the run with its own config.yaml and folder: drop --set, --data, --out and --skip-bad"
            )
        trainer.resume(args.resume)
        return
    config, out = _run_config(args)
    if not _dry_run(args, config, out):
        trainer.train(config, out)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "evaluate",
        help="score a checkpoint on the test split of a dataset",
        description="Score CHECKPOINT on the test fold of a preset's dataset and write metrics.json, per_au.csv/.md "
        "(per_au_intensity.csv/.md for intensity checkpoints) and predictions.csv. Without --preset, the config.yaml of the checkpoint's run folder is used.",
    )
    parser.add_argument(
        "checkpoint", metavar="CHECKPOINT", type=path_arg, help="checkpoint path without suffix, e.g. runs/x/best"
    )
    _add_run_flags(parser, None, _DATA_HELP)
    parser.add_argument(
        "--fold", type=int, default=None, metavar="K", help="test fold, 0-based (default: the config's data.fold)"
    )
    parser.add_argument(
        "--target",
        default=None,
        metavar="DIR",
        type=path_arg,
        help="score on the whole of this prepared dataset instead of a fold",
    )
    parser.add_argument(
        "--list",
        nargs=2,
        default=None,
        metavar=("IMG_LIST", "LABEL_LIST"),
        type=path_arg,
        help="score on ME-GraphAU list files instead (image paths; one 1/0/-1 per AU a line)",
    )
    parser.add_argument(
        "--list-aus",
        default=None,
        metavar="AUS",
        help="AUs of the label list's columns, e.g. 1,2,4,6 (default: the checkpoint's AUs)",
    )
    parser.add_argument(
        "--image-root",
        default=".",
        metavar="DIR",
        type=path_arg,
        help="folder the list's image paths are relative to (default: .)",
    )
    parser.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from auformer.config import DEFAULT_PRESET
    from auformer.engine import protocols as trainer

    if args.preset is None:
        run_config = Path(args.checkpoint).parent / "config.yaml"
        args.preset = str(run_config) if run_config.is_file() else DEFAULT_PRESET
    config, out = _run_config(args, fold=args.fold, target_root=args.target)
    table = None
    if args.list:
        from auformer.aus import parse_au_list
        from auformer.data import read_list_files
        from auformer.model.checkpoint import read_checkpoint_meta

        aus = parse_au_list(args.list_aus) if args.list_aus else read_checkpoint_meta(args.checkpoint)["aus"]
        table = read_list_files(args.list[0], args.list[1], aus, args.image_root, "keep" if args.skip_bad else "error")
    trainer.evaluate(args.checkpoint, config, out, table=table)


def _add_protocol(
    sub: argparse._SubParsersAction, name: str, default_preset: str, data_help: str, **texts: str
) -> argparse.ArgumentParser:
    """A multi-run protocol command (cv, cross-domain, data-efficiency): run flags + ``_run_protocol``."""
    parser = sub.add_parser(name, **texts)
    _add_run_flags(parser, default_preset, data_help)
    _add_dry_run_flag(parser)
    parser.set_defaults(func=_run_protocol)
    return parser


def _add_cv(sub: argparse._SubParsersAction) -> None:
    _add_protocol(
        sub, "cv", "synthetic", _DATA_HELP,
        help="cross-validation: train and test every fold, then the per-AU F1 table",
        description="Run every fold of the preset (data.cv_folds, default all) into OUT/fold<k>/, then write "
        "the per-fold and mean per-AU F1 table (table.md), the mean metrics.json and runs.json.",
    )  # fmt: skip


def _add_cross_domain(sub: argparse._SubParsersAction) -> None:
    parser = _add_protocol(
        sub, "cross-domain", "bp4d-to-disfa", "prepared folder of the source dataset (trained on)",
        help="train on two source folds, test on the whole target dataset (BP4D <-> DISFA)",
        description="For each held-out source fold, train on the other source folds and test on all of the target "
        "dataset, on the shared AUs 1, 2, 4, 6, 12; then the per-run and mean F1 table.",
    )  # fmt: skip
    parser.add_argument(
        "--target", required=True, metavar="DIR", type=path_arg, help="prepared folder of the target dataset (tested whole)"
    )


def _add_data_efficiency(sub: argparse._SubParsersAction) -> None:
    _add_protocol(
        sub, "data-efficiency", "bp4d-data-efficiency", _DATA_HELP,
        help="cross-validation on equidistant subsets of the training lists (10/1/0.5/0.1%%)",
        description="For each rate of data.data_efficiency_rates, subsample every fold's training list "
        "equidistantly, keep the test folds, run cross-validation into OUT/rate<r>%%/; then the F1 table per rate.",
    )  # fmt: skip


def _add_ablation(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ablation",
        help="the paper's ablation grids (Tables 4, 5a-5d): every row cross-validated, ours beside the paper's F1",
        description="Cross-validate each row of the table (a set of config overrides on top of --preset/--set) into "
        "OUT/<row>/fold<k>/, then write OUT/table<T>.md and .csv in the paper's layout with the paper's mean F1 "
        "beside ours. Rerun with the same --out to continue an interrupted grid: finished folds are reused, a "
        "killed fold resumes. Rows: docs/ablations.md.",
    )
    _add_run_flags(parser, "bp4d", _DATA_HELP)
    parser.add_argument(
        "--table",
        required=True,
        choices=("4", "5a", "5b", "5c", "5d"),
        help="4: components; 5a: adaptation module; 5b: MRF dilations; 5c: CA size; 5d: MDWA margin",
    )
    parser.set_defaults(func=_run_ablation)


def _run_ablation(args: argparse.Namespace) -> None:
    from auformer.engine.ablation import run_ablation

    config, out = _run_config(args)
    run_ablation(config, args.table, out)


def _run_protocol(args: argparse.Namespace) -> None:
    from auformer.engine import protocols as trainer

    config, out = _run_config(args, target_root=getattr(args, "target", None))
    if _dry_run(args, config, out):
        return
    run = trainer.data_efficiency if args.command == "data-efficiency" else trainer.cross_validate
    run(config, out)


def _add_push(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "push",
        help="share a checkpoint's adapters on the Hugging Face Hub",
        description="Upload CKPT's adapter-only files (as adapter.safetensors + adapter.json) and a model card "
        "(README.md) to the Hub repo REPO_ID, created if missing; the frozen backbone is not uploaded. "
        "Log in first (`hf auth login` or HF_TOKEN). Others then load it with --checkpoint REPO_ID. See docs/sharing.md.",
    )
    parser.add_argument(
        "checkpoint", metavar="CKPT", type=path_arg, help="local AUFormer checkpoint (PATH, PATH.safetensors or PATH.json)"
    )
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub model repo, user/name or organisation/name")
    parser.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    parser.add_argument("--message", default="Upload auformer adapters", help="commit message (default: %(default)s)")
    parser.set_defaults(func=_run_push)


def _run_push(args: argparse.Namespace) -> None:
    from auformer.sharing import push_checkpoint

    url = push_checkpoint(args.checkpoint, args.repo_id, private=args.private, message=args.message)
    print(f"pushed {args.checkpoint} to https://huggingface.co/{args.repo_id} (commit {url})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auformer",
        description="AUFormer: facial Action Unit detection with Mixture-of-Knowledge-Experts on a frozen ViT.",
    )
    from auformer import __version__

    parser.add_argument("--version", action="version", version=f"auformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = (
        _add_info,
        _add_detect,
        _add_export,
        _add_prepare,
        _add_train,
        _add_evaluate,
        _add_cv,
        _add_cross_domain,
        _add_data_efficiency,
        _add_synth,
        _add_pretrain_synthetic,
        _add_push,
        _add_weights,
        _add_ablation,
        _add_explain,
        _add_serve,
    )
    for add in commands:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.func(args)
    except (AUFormerError, ConnectionError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    except OSError as error:
        problem = environment_problem(error)
        if problem is None:
            raise  # not the user's files or disk: a bug
        print(f"error: {problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
