"""Corpus detection scaling (1 process vs 2 torchrun ranks, 1 thread each) and memory of a 100,000-path list.

    python benchmarks/bench_scale.py --out /tmp/bench_scale                 # both tables
    python benchmarks/bench_scale.py --out /tmp/bench_scale --photos 8 --clips 2 --repeats 1

``scaling``: the same generated corpus (photos of two faces, clips of a moving head) through
``auformer detect --list`` in one process and under ``torchrun --nproc-per-node 2``, both with
OMP_NUM_THREADS=1, alternated ``--repeats`` times so both see the same machine load (the
load average is recorded before and after). Wall time includes start-up (imports, model),
as a user sees it. ``memory``: peak RSS of a fresh process that reads a 100,000-line list,
stats every path and computes the split (`auformer.detect.shard`), minus the same process
before reading, beside a process holding the list as Python ``Path`` objects.
Writes ``OUT/bench_scale.json`` and ``OUT/bench_scale.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

import auformer

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

_RSS = """
import resource, sys
from pathlib import Path
import numpy as np
from auformer.detect.shard import assign, read_list
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[2] == "compact":
    corpus = read_list(sys.argv[1])
    owner = assign(corpus.sizes(), 8)
    held = len(corpus.paths)
else:
    paths = [Path(line.rstrip("\\n")) for line in open(sys.argv[1])]
    held = len(paths)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(held, before, after)
"""


def make_corpus(root: Path, photos: int, clips: int) -> Path:
    """Photos (the astronaut, resized and mirrored) and 24-frame 320x240 clips, listed in ``root/list.txt``."""
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(photos):
        image = cv2.resize(data.astronaut(), (256 + 32 * (index % 4),) * 2)
        name = f"photo_{index:03d}.png"
        cv2.imwrite(str(root / name), cv2.cvtColor(image[:, ::-1] if index % 2 else image, cv2.COLOR_RGB2BGR))
        names.append(name)
    head = cv2.resize(data.astronaut()[30:230, 120:320], (120, 120))
    for index in range(clips):
        name = f"clip_{index:02d}.avi"
        writer = cv2.VideoWriter(str(root / name), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
        for frame_index in range(24):
            frame = np.full((240, 320, 3), 200, dtype=np.uint8)
            left = 10 + 7 * frame_index
            frame[50:170, left : left + 120] = head
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
        names.append(name)
    (root / "list.txt").write_text("".join(f"{name}\n" for name in names))
    return root / "list.txt"


def make_checkpoint(path: Path) -> Path:
    """A random ViT-Tiny AUFormer at 112 px (speed does not depend on the weights)."""
    model = auformer.build_model(
        5, backbone="vit_tiny_patch16_224", backbone_weights="random", img_size=112, aus=[1, 2, 4, 6, 12]
    )
    auformer.save_checkpoint(model, path, extra={"dataset": "synthetic"})
    return path


def time_detect(listing: Path, checkpoint: Path, out: Path, ranks: int) -> tuple[float, dict]:
    launch = (
        [sys.executable]
        if ranks == 1
        else [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    )
    command = [
        *launch,
        "-m",
        "auformer",
        "detect",
        "--list",
        str(listing),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--overwrite",
    ]
    started = time.perf_counter()
    subprocess.run(command, env=ENV, check=True, capture_output=True)
    seconds = time.perf_counter() - started
    return seconds, json.loads((out / "detect.json").read_text())


def scaling(out: Path, photos: int, clips: int, repeats: int) -> dict:
    listing = make_corpus(out / "corpus", photos, clips)
    checkpoint = make_checkpoint(out / "tiny")
    load_before = os.getloadavg()
    best: dict[int, tuple[float, dict]] = {}
    for _ in range(repeats):
        for ranks in (1, 2):  # alternated: both see the same load
            seconds, summary = time_detect(listing, checkpoint, out / f"run{ranks}", ranks)
            if ranks not in best or seconds < best[ranks][0]:
                best[ranks] = (seconds, summary)
    rows = []
    for ranks, (seconds, summary) in sorted(best.items()):
        rows.append(
            {
                "processes": ranks,
                "wall_s": round(seconds, 2),
                "frames": summary["frames"],
                "frames_per_s": round(summary["frames"] / seconds, 2),
                "per_rank_frames_per_s": [rank["frames_per_s"] for rank in summary["ranks"]],
                "per_rank_inputs": [rank["inputs"] for rank in summary["ranks"]],
            }
        )
    return {
        "rows": rows,
        "speedup": round(best[1][0] / best[2][0], 2),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "inputs": photos + clips,
    }


def memory(out: Path, paths: int) -> dict:
    listing = out / "paths_100k.txt"
    listing.write_text("".join(f"videos/site_{index % 97:02d}/session_{index:06d}.mp4\n" for index in range(paths)))
    result = {}
    for mode in ("compact", "path_objects"):
        held, before, after = subprocess.run(
            [sys.executable, "-c", _RSS, str(listing), mode], env=ENV, check=True, capture_output=True, text=True
        ).stdout.split()
        result[mode] = {"paths": int(held), "rss_before_mib": int(before) / 1024, "peak_rss_mib": int(after) / 1024,
                        "growth_mib": (int(after) - int(before)) / 1024}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--photos", type=int, default=16)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--paths", type=int, default=100_000)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"scaling": scaling(args.out, args.photos, args.clips, args.repeats), "memory": memory(args.out, args.paths)}
    lines = [
        "| processes | wall s | frames | frames/s | per-rank frames/s | per-rank inputs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["scaling"]["rows"]:
        lines.append(
            f"| {row['processes']} | {row['wall_s']} | {row['frames']} | {row['frames_per_s']} | "
            f"{row['per_rank_frames_per_s']} | {row['per_rank_inputs']} |"
        )
    scale = results["scaling"]
    lines += [
        "",
        f"speed-up 2 vs 1: {scale['speedup']}x (load average before {scale['load_before']}, after {scale['load_after']})",
        "",
        "| list held as | paths | RSS before MiB | peak RSS MiB | growth MiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for mode, row in results["memory"].items():
        lines.append(
            f"| {mode} | {row['paths']} | {row['rss_before_mib']:.1f} | {row['peak_rss_mib']:.1f} | {row['growth_mib']:.1f} |"
        )
    (args.out / "bench_scale.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "bench_scale.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out / 'bench_scale.md'} and {args.out / 'bench_scale.json'}")


if __name__ == "__main__":
    main()
