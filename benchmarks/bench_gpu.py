"""Issue 24's GPU rows in one short run: ViT-B/16 AUFormer training and inference images/s (bf16), the
loader's own images/s beside them, and the BP4D 3-fold CV time they imply, with the card's name.

    python benchmarks/bench_gpu.py --out DIR                           # a CUDA machine: the figures (a few minutes)
    python benchmarks/bench_gpu.py --out DIR --device cpu --quick      # a smoke run anywhere (small model): not figures

The model, loss and optimiser are the trainer's (the ``bp4d`` preset's model on a random backbone:
speed does not depend on the weights' values; `build_loss`; fused AdamW), on random images already
on the device, so the training and inference rates are the network's own. The loader's rate is
`bench_loader`'s: generated 256 px JPEG face crops through the training transform with
``--workers`` processes. A run is as fast as the slower of the two. The CV time is an estimate
from these rates (`cv_seconds`), not a run: BP4D is licensed and not on the benchmark machines.
Writes ``OUT/bench_gpu.json`` and ``OUT/bench_gpu.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bench_gpu.py` from the repository root
    sys.path.insert(0, str(ROOT))

from auformer.config.presets import load_config  # noqa: E402
from auformer.engine.build import build_loss, model_from_config  # noqa: E402
from auformer.engine.schedule import micro_batch_size, plan_run  # noqa: E402
from auformer.files import atomic_write_text  # noqa: E402
from benchmarks.bench_loader import images_per_second, make_jpegs  # noqa: E402

BP4D_FRAMES = 140_000  # labelled BP4D frames of the AU literature's protocol ("about 140,000", JAA-Net, ME-GraphAU)
GOALS = {"train_images_per_s": 600, "inference_images_per_s": 1500, "cv_hours": 1.0}  # issue 24, H100-class card
NO_CUDA = "no CUDA device here: the GPU figures are not measured"
QUICK_MODEL = [  # --quick: the synthetic preset's small backbone shape, 2 layers, at 64 px
    "model.backbone=vit_tiny_patch16_224",
    "model.backbone_kwargs={patch_size: 8, embed_dim: 96, depth: 2, num_heads: 3}",
    "data.img_size=64",
]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images_per_s(step: Callable[[], object], batch: int, steps: int, warmup: int, device: torch.device) -> float:
    """Images/s of ``step`` (``batch`` images a call) over ``steps`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronize(device)
    return batch * steps / (time.perf_counter() - started)


def train_rate(
    model, network, loss_fn, batch: int, steps: int, warmup: int, dtype: torch.dtype | None, device: torch.device
) -> float:
    """Training images/s of ``network`` (``model``, or it compiled): forward under autocast, ``loss_fn``, backward,
    a fused AdamW step on ``model``'s learnable parameters."""
    network.train()
    optimizer = torch.optim.AdamW(model.learnable_parameters(), lr=1e-4, fused=True)
    size = model.data_config["input_size"][-1]
    images = torch.randn(batch, 3, size, size, device=device)  # (B, 3, S, S)
    targets = torch.randint(0, 2, (batch, len(model.aus)), device=device).float()  # (B, N)
    rate = targets.mean(0).clamp(0.05, 0.95)  # (N,) occurrence rates, as the trainer takes from its labels

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            output = network(images)
        loss = loss_fn(output, targets, rate)["total"]
        loss.item()  # the trainer reads every step's loss (its NaN check): a wait for the card, timed here too
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return _images_per_s(step, batch, steps, warmup, device)


@torch.inference_mode()
def inference_rate(model, network, batch: int, iters: int, warmup: int, dtype: torch.dtype | None, device: torch.device) -> float:
    """Inference images/s of ``network`` (``model``, or it compiled; eval mode, no grad) under autocast."""
    network.eval()
    size = model.data_config["input_size"][-1]
    images = torch.randn(batch, 3, size, size, device=device)  # (B, 3, S, S)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            network(images)

    return _images_per_s(step, batch, iters, warmup, device)


def cv_seconds(
    frames: int, folds: int, epochs: int, evaluations: int, train_per_s: float, inference_per_s: float, loader_per_s: float
) -> float:
    """Seconds of a ``folds``-fold CV over ``frames``: each fold trains ``epochs`` passes over the other folds'
    frames at the slower of the network's and the loader's rate, and scores its own frames ``evaluations`` times."""
    train_frames, test_frames = frames * (folds - 1) / folds, frames / folds
    per_fold = epochs * train_frames / min(train_per_s, loader_per_s) + evaluations * test_frames / min(
        inference_per_s, loader_per_s
    )
    return folds * per_fold


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} torch threads"


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "none": None}[args.amp]
    with tempfile.TemporaryDirectory() as tmp:
        table = make_jpegs(Path(tmp), 4 * args.batch if args.quick else args.loader_images)  # generated face crops
        overrides = ["model.backbone_weights=random", *(QUICK_MODEL if args.quick else [])]
        config = load_config(args.preset, overrides, data_dir=tmp)  # a real-data preset wants a folder: these JPEGs
        loader_per_s = images_per_second(table, args.workers, args.batch, config.data.img_size, True, 1)
    aus = list(config.data.aus)
    model = model_from_config(config, aus, "random").to(device)
    network = torch.compile(model) if args.compile else model
    steps, warmup = (2, 1) if args.quick else (args.steps, 5)
    result = {
        "device": device_name(device),
        "torch": torch.__version__,
        "preset": args.preset,
        "backbone": config.model.backbone,
        "aus": len(aus),
        "amp": args.amp,
        "compile": args.compile,
        "train_batch": args.batch,
        "train_images_per_s": round(train_rate(model, network, build_loss(config), args.batch, steps, warmup, dtype, device), 1),
        "inference_batch": args.inference_batch,
        "inference_images_per_s": round(inference_rate(model, network, args.inference_batch, steps, warmup, dtype, device), 1),
        "loader_workers": args.workers,
        "loader_images_per_s": round(loader_per_s, 1),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    folds = 3
    train_frames = args.bp4d_frames * (folds - 1) // folds
    # The trainer's own schedule of a fold: its epochs and the epochs after which it scores the test split.
    schedule = plan_run(config.train, train_frames, train_frames, micro_batch_size(config.train, 1))
    evaluations = len(schedule.eval_points())
    seconds = cv_seconds(
        args.bp4d_frames, folds, schedule.epochs, evaluations,
        result["train_images_per_s"], result["inference_images_per_s"], result["loader_images_per_s"],
    )  # fmt: skip
    result.update(bp4d_frames=args.bp4d_frames, epochs=schedule.epochs, evaluations=evaluations)
    result["cv_hours_estimate"] = round(seconds / 3600, 2)
    return result


def markdown(result: dict) -> str:
    """The result as the table of docs/performance.md, each figure beside issue 24's goal."""
    rows = [
        ("training images/s", result["train_images_per_s"], f">= {GOALS['train_images_per_s']}"),
        ("inference images/s", result["inference_images_per_s"], f">= {GOALS['inference_images_per_s']}"),
        (f"loader images/s ({result['loader_workers']} workers)", result["loader_images_per_s"], "above the training rate"),
        (
            f"BP4D 3-fold CV, hours (estimate: {result['bp4d_frames']:,} frames, {result['epochs']} epochs)",
            result["cv_hours_estimate"],
            f"< {GOALS['cv_hours']:g}",
        ),
    ]
    lines = [
        f"{result['device']}, torch {result['torch']}, {result['backbone']} with {result['aus']} AUs, amp {result['amp']}"
        f"{', compiled' if result['compile'] else ''}, training batch {result['train_batch']}, inference batch "
        f"{result['inference_batch']}",
        "",
        "| figure | measured | goal |",
        "| --- | --- | --- |",
        *(f"| {name} | {value} | {goal} |" for name, value, goal in rows),
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for bench_gpu.json and bench_gpu.md")
    parser.add_argument("--device", default="cuda", help="torch device (default: %(default)s)")
    parser.add_argument("--preset", default="bp4d", help="the preset whose model and run length are timed (default: %(default)s)")
    parser.add_argument("--amp", choices=("bf16", "none"), default="bf16", help="autocast dtype (default: %(default)s)")
    parser.add_argument("--compile", action="store_true", help="time the model under torch.compile (train.compile)")
    parser.add_argument("--batch", type=int, default=64, help="training (and loader) batch (default: %(default)s)")
    parser.add_argument("--inference-batch", type=int, default=256, help="inference batch (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps and inference batches (default: %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=min(16, os.cpu_count() or 1), help="loader processes (default: %(default)s)"
    )
    parser.add_argument("--loader-images", type=int, default=2048, help="generated JPEGs the loader reads (default: %(default)s)")
    parser.add_argument(
        "--bp4d-frames", type=int, default=BP4D_FRAMES, help="labelled frames the CV estimate assumes (default: %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: a 2-layer small model, 2 steps (not figures)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"error: {NO_CUDA} (--device cpu --quick for a smoke run)")
        return 2
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    table = markdown(result)
    atomic_write_text(args.out / "bench_gpu.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "bench_gpu.md", table)
    print(table + f"wrote {args.out / 'bench_gpu.json'} and {args.out / 'bench_gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
