"""Loader throughput: images/s of AUDataset + DataLoader over 256 px JPEG face crops, 256 -> 224.

Compare the number with the model's training step rate: when the loader is slower,
training waits on data and more workers (or smaller crops) are needed.

    python benchmarks/bench_loader.py --workers 0 1 2 --num-images 512
    python benchmarks/bench_loader.py --data PREPARED_DIR --workers 4 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from auformer.data import AUDataset, AUTable, build_transform, read_manifest

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_jpegs(folder: Path, count: int, size: int = 256) -> AUTable:
    """``count`` smooth random ``size`` px JPEGs (face-crop-like file sizes) and random labels."""
    rng = np.random.default_rng(0)
    images = []
    for index in range(count):
        small = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
        image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)  # (size, size, 3)
        cv2.imwrite(str(folder / f"{index:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(f"{index:05d}.jpg")
    labels = rng.integers(0, 2, size=(count, 12)).astype(np.float32)
    return AUTable(folder, images, ["s"] * count, labels, [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24])


def images_per_second(table: AUTable, workers: int, batch_size: int, img_size: int, train: bool, epochs: int) -> float:
    """Images/s over ``epochs`` passes, after one warm-up batch (worker start-up excluded)."""
    dataset = AUDataset(table, build_transform(train, img_size, IMAGENET_MEAN, IMAGENET_STD))
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0, drop_last=True
    )
    iter_loader = iter(loader)
    next(iter_loader)  # warm-up: starts the workers
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for images, _labels in iter_loader:
            seen += len(images)
        iter_loader = iter(loader)
    return seen / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="prepared dataset folder to read (default: generated JPEGs)")
    parser.add_argument("--num-images", type=int, default=512, help="generated JPEGs when no --data (default: %(default)s)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="worker counts to time (default: 0 1 2)")
    parser.add_argument("--batch-size", type=int, default=32, help="batch size (default: %(default)s)")
    parser.add_argument(
        "--img-size", type=int, default=224, help="crop size after resizing to img_size*256/224 (default: %(default)s)"
    )
    parser.add_argument(
        "--test", action="store_true", help="time the test transform (resize + centre crop), not train augmentation"
    )
    parser.add_argument("--epochs", type=int, default=2, help="passes over the images per worker count (default: %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one intra-op thread per process, as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        table = read_manifest(args.data) if args.data else make_jpegs(Path(tmp), args.num_images)
        mode = "test" if args.test else "train"
        print(f"{len(table)} images, {mode} transform, {args.img_size} px crops, batch {args.batch_size}")
        for workers in args.workers:
            rate = images_per_second(table, workers, args.batch_size, args.img_size, not args.test, args.epochs)
            print(f"workers={workers}: {rate:8.1f} images/s")


if __name__ == "__main__":
    main()
