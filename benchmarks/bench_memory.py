"""Peak memory (RSS) of `auformer detect` and `auformer evaluate` against input length.

    python benchmarks/bench_memory.py                                   # the sizes of docs/reliability.md
    python benchmarks/bench_memory.py --images 100 1000 --minutes 1 10 --manifest 2000 8000 32000 --out /tmp/mem

Each measurement is one fresh `python -m auformer ...` process; its peak resident set
size comes from ``os.wait4`` (the kernel's ``ru_maxrss`` of that child alone). Inputs
are generated: 48x48 PNG photos, a 48x48 10 fps MJPEG video of the given length, and
a prepared dataset whose manifest rows are symbolic links to 16 PNG files (distinct
paths, so the run decodes every row). The model is a randomly initialised 2-block,
width-32 ViT at 32 px (memory of the data path, not of the model), and
``--face-detector none`` treats every frame as an aligned face, so detection time is
decoding and inference only. Flat memory means: peak RSS does not grow with the
number of frames or rows beyond the per-row tables that the outputs themselves need.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from auformer.data import AUTable, write_folds, write_manifest
from auformer.files import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media import tiny_checkpoint  # noqa: E402  (the tests' tiny model: 2 blocks, width 32, 32 px; after sys.path)

AUS = [1, 2, 4, 6, 12]
FPS = 10.0


def peak_rss(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one child process running ``command``; it must succeed."""
    started = time.perf_counter()
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    _, status, usage = os.wait4(child.pid, 0)
    stderr = child.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - started  # Linux reports KiB


def write_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(count):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(folder / f"{index:06d}.png")


def write_video(path: Path, minutes: float) -> int:
    frames = round(minutes * 60 * FPS)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (48, 48))
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 255, (16, 48, 48, 3), dtype=np.uint8)  # 16 distinct frames, cycled
    for index in range(frames):
        writer.write(pool[index % len(pool)])
    writer.release()
    return frames


def write_dataset(folder: Path, rows: int) -> None:
    """A prepared dataset of ``rows`` images (links to 16 PNGs) in 8 subjects, all in fold 0."""
    write_images(folder / "pool", 16)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for row in range(rows):
        name = f"images/{row:07d}.png"
        os.symlink(folder / "pool" / f"{row % 16:06d}.png", folder / name)
        names.append(name)
    labels = np.random.default_rng(0).integers(0, 2, (rows, len(AUS))).astype(np.float32)
    subjects = [f"s{row % 8}" for row in range(rows)]
    write_manifest(AUTable(folder, names, subjects, labels, AUS), folder)
    write_folds(folder, [[f"s{k}" for k in range(8)]], AUS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--images", type=int, nargs="*", default=[100, 1000], metavar="N", help="photo counts for detect (default: %(default)s)"
    )
    parser.add_argument(
        "--minutes",
        type=float,
        nargs="*",
        default=[1, 3, 10],
        metavar="M",
        help="video lengths in minutes (default: %(default)s)",
    )
    parser.add_argument(
        "--manifest",
        type=int,
        nargs="*",
        default=[2000, 8000, 32000],
        metavar="ROWS",
        help="manifest sizes for evaluate (default: %(default)s)",
    )
    parser.add_argument("--out", default=None, metavar="DIR", help="also write DIR/bench_memory.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="auformer-bench-memory-"))
    checkpoint = tiny_checkpoint(work / "tiny", AUS)
    auformer_cli = [sys.executable, "-m", "auformer"]
    detect = [*auformer_cli, "detect", "--checkpoint", str(checkpoint), "--face-detector", "none"]
    results = []

    def record(kind: str, size: int, unit: str, command: list[str]) -> None:
        rss, seconds = peak_rss(command)
        results.append(
            {"command": kind, "input": size, "unit": unit, "peak_rss_mib": round(rss, 1), "seconds": round(seconds, 1)}
        )
        print(f"{kind:9s} {size:>7d} {unit:7s} peak RSS {rss:7.1f} MiB  ({seconds:.0f} s)", flush=True)

    for count in args.images:
        write_images(work / f"photos{count}", count)
        record("detect", count, "images", [*detect, str(work / f"photos{count}"), "--out", str(work / f"out_photos{count}")])
    for minutes in args.minutes:
        video = work / f"video{minutes:g}min.avi"
        frames = write_video(video, minutes)
        record("detect", frames, "frames", [*detect, str(video), "--out", str(work / f"out_video{minutes:g}")])
    preset = work / "eval.yaml"
    preset.write_text("data: {num_workers: 0, resize_size: 32, img_size: 32}\ntrain: {batch_size: 64}\n")
    for rows in args.manifest:
        write_dataset(work / f"data{rows}", rows)
        record("evaluate", rows, "rows", [*auformer_cli, "evaluate", str(checkpoint), "--preset", str(preset),
                                          "--target", str(work / f"data{rows}"), "--out", str(work / f"out_eval{rows}")])  # fmt: skip
    if args.out:
        atomic_write_text(Path(args.out) / "bench_memory.json", json.dumps(results, indent=2) + "\n")
        print(f"wrote {Path(args.out) / 'bench_memory.json'}")
    print(f"inputs and outputs in {work}")


if __name__ == "__main__":
    main()
