"""`auformer live` on a recorded real-face clip replayed as a camera: analysed fps, latency, dropped frames.

    python benchmarks/bench_live.py --out /tmp/bench                 # small model, 20 s clip, with and without tracking
    python benchmarks/bench_live.py --out /tmp/bench --seconds 600 --runtimes onnxruntime --detect-every 5  # 10 minutes: flat?

The clip: 640x480 at 30 fps, the astronaut's head (scikit-image) drifting across the frame
and Grace Hopper's head still beside it (two faces), written to OUT. It is played in real
time (``--realtime``, as a camera delivers frames), through the real command, once with
tracking (``--detect-every 5``: detect every 5th analysed frame, follow faces between) and once
without (``--detect-every 1``), each on PyTorch and on ONNX Runtime (the same weights exported
with ``auformer export``); ``--runtimes`` and ``--detect-every`` pick some. A run of more than a
minute also gets a table per minute (frames, p50/p95 latency, memory) from ``live.json``. The model is `bench_detect.py`'s small random-init ViT (speed
does not depend on the weights). Reported per run, from the run's ``live.json``: analysed
frames per second, p50/p95 latency from capture to result, dropped frames, and the process's
memory (RSS) after each run. Goal (issue 20): >= 15 analysed fps and p95 <= 150 ms on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from media import heads  # noqa: E402  (the test media, after sys.path)

FPS = 30.0
SIZE = (640, 480)


def write_clip(path: Path, seconds: float) -> Path:
    """The 640x480, 30 fps clip of the module docstring (MJPEG)."""
    astronaut, hopper = (cv2.resize(head, (200, 200), interpolation=cv2.INTER_AREA) for head in heads())
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)  # frame by frame: memory stays small
    for index in range(round(seconds * FPS)):
        frame = np.full((SIZE[1], SIZE[0], 3), 175, dtype=np.uint8)
        left = round(20 + 180 * (0.5 + 0.5 * np.sin(index / 45)))  # drifts 20-200 px and back every 9 s
        top = round(60 + 20 * np.sin(index / 13))
        frame[top : top + 200, left : left + 200] = astronaut
        frame[240:440, 420:620] = hopper
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def run_one(clip: Path, checkpoint: Path, out: Path, detect_every: int, runtime: str = "torch") -> dict:
    from auformer.cli import main
    from auformer.detect.live import resident_mb

    status = main(
        ["live", "--source", str(clip), "--checkpoint", str(checkpoint), "--out", str(out), "--csv", "rows.csv"]
        + ["--detect-every", str(detect_every), "--runtime", runtime]
    )
    if status != 0:
        raise SystemExit(f"auformer live failed ({status})")
    summary = json.loads((out / "live.json").read_text())
    return {
        "detect_every": detect_every,
        "runtime": runtime,
        "analysed_fps": round(summary["analysed_frames"] / summary["seconds"], 1),
        "p50_ms": summary["latency_ms"]["p50"],
        "p95_ms": summary["latency_ms"]["p95"],
        "captured": summary["captured_frames"],
        "analysed": summary["analysed_frames"],
        "dropped": summary["dropped_frames"],
        "faces_per_frame": round(summary["faces"] / max(1, summary["analysed_frames"]), 2),
        "rss_mb": resident_mb(),
        "minutes": summary.get("minutes", []),
    }


def to_markdown(results: dict) -> str:
    lines = [
        f"`auformer live`, {results['clip']}, small model, torch threads {results['threads']}, "
        f"load average before {results['load_before']}, after {results['load_after']}",
        "",
        "| run | analysed fps | p50 latency ms | p95 latency ms | captured | analysed | dropped | faces/frame | RSS after MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results["runs"].items():
        lines.append(
            f"| {name} | {row['analysed_fps']} | {row['p50_ms']} | {row['p95_ms']} | {row['captured']} | {row['analysed']} "
            f"| {row['dropped']} | {row['faces_per_frame']} | {row['rss_mb']} |"
        )
    for name, row in results["runs"].items():
        if len(row["minutes"]) > 1:  # a long stream: is latency (and memory) flat?
            lines += ["", f"{name}, per minute:", "", "| minute | analysed | p50 ms | p95 ms | RSS MB |", "|---|---|---|---|---|"]
            lines += [
                f"| {m['minute']} | {m['analysed']} | {m['p50_ms']} | {m['p95_ms']} | {m['rss_mb']} |" for m in row["minutes"]
            ]
    return "\n".join(lines) + "\n"


def run(
    out: Path,
    seconds: float = 20.0,
    threads: int | None = None,
    runtimes: tuple = ("torch", "onnxruntime"),
    every: tuple = (5, 1),
) -> dict:
    """Write the clip and a small checkpoint to ``out``, time the runs (each runtime, each ``--detect-every``),
    write ``bench_live.json`` and ``.md``."""
    import torch

    from benchmarks.bench_detect import _random_checkpoint

    if threads is not None:
        torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    clip = write_clip(out / "clip.avi", seconds)
    checkpoint = _random_checkpoint(out / "small", "synthetic")
    results = {
        "clip": f"{SIZE[0]}x{SIZE[1]} at {FPS:g} fps, {seconds:g} s, 2 faces, played in real time",
        "threads": torch.get_num_threads(),
        "load_before": round(os.getloadavg()[0], 2),
        "runs": {},
    }
    for runtime in runtimes:
        model = checkpoint
        if runtime == "onnxruntime":  # the same weights on ONNX Runtime (`auformer export`, fp32): issue 24's CPU runtime
            from auformer.export import export_model

            model = export_model(checkpoint, out / "onnx")
        for k in every:
            name = f"{runtime}, " + (f"with tracking (detect every {k})" if k > 1 else "without tracking (detect every frame)")
            results["runs"][name] = run_one(clip, model, out / f"{runtime}-every{k}", k, runtime)
    results["load_after"] = round(os.getloadavg()[0], 2)
    (out / "bench_live.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_live.md").write_text(to_markdown(results))
    print(to_markdown(results))
    print(f"wrote {out / 'bench_live.json'} and {out / 'bench_live.md'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the clip, the runs and bench_live.json/.md")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the replayed clip (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own, the core count)")
    parser.add_argument("--runtimes", nargs="+", choices=["torch", "onnxruntime"], default=["torch", "onnxruntime"],
                        help="inference runtimes to time (default: both)")  # fmt: skip
    parser.add_argument("--detect-every", nargs="+", type=int, default=[5, 1], metavar="K", help="runs to time (default: 5 1)")
    args = parser.parse_args(argv)
    run(Path(args.out), args.seconds, args.threads, tuple(args.runtimes), tuple(args.detect_every))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
