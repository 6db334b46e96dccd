"""Face-detector recall and speed on real photos, and `auformer detect` throughput end to end.

    python benchmarks/bench_detect.py --out /tmp/bench                         # all tables, small model
    python benchmarks/bench_detect.py --out /tmp/bench --before-src /work/main/src   # also the code in that tree
    python benchmarks/bench_detect.py --out /tmp/bench --model vit-b --parts throughput
    python benchmarks/bench_detect.py --out /tmp/bench --parts cli --before-src /work/main/src   # the command, start-up included

``run(out_dir, ...)`` is the entry point for a benchmark runner: it writes
``OUT/bench_detect.json`` and ``OUT/bench_detect.md`` and returns the results.

Parts:
- ``detectors``: per face detector, faces found in the composite group photo
  (`tests/face_photos.py`: five real faces, two with sunglasses, one with mouth and
  chin covered, one tilted), in 24 single-face portraits of 640x490 and of 256x256
  (the astronaut, Grace Hopper, their mirror images, 20 LFW faces), and in the LFW
  subset (100 faces, 100 non-faces), with milliseconds per image.
- ``throughput``: images/s of `Detector` end to end (JPEG decoding, face finding,
  alignment, network) on those portraits, and frames/s on a 640x480 video of a slowly
  moving head with ``detect_every`` 1 and 5. Models are randomly initialised (speed
  does not depend on the weights). With ``--before-src`` the same timings run on the
  code of another tree (e.g. main) with its default face detector, alternating with
  this tree, so that both see the same machine load.
- ``cli``: ``auformer detect FOLDER`` as a user runs it, start-up included (Python,
  imports, checkpoint, face detector), on ``--cli-photos`` 640x490 portraits (default 283:
  the portraits above with 100 LFW faces, cycled), torch's default threads; images/s is
  photos / wall seconds of the whole command, with its CPU seconds (user + system) per run
  beside it. Before and after alternate, run by run.

Each timing is the best of ``--repeats`` runs, per wall-clock second and per CPU
second of the process (all threads): the CPU may be shared with other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from face_photos import group_photo, lfw_images, portraits  # noqa: E402  (the photos the tests use, after sys.path)

MODELS = {
    "synthetic": dict(
        backbone="vit_tiny_patch16_224",
        backbone_weights="random",  # speed only: the weights' values do not matter
        img_size=64,
        backbone_kwargs=dict(patch_size=8, embed_dim=96, depth=4, num_heads=3),
    ),
    "vit-b": dict(backbone="vit_base_patch16_224", backbone_weights="random", img_size=224, backbone_kwargs={}),
}


def _candidates() -> dict:
    """Face detectors to compare: name -> ``detect(image_rgb) -> boxes``, built lazily."""
    import dlib

    from auformer.faces.detectors import DlibDetector, _face_recognition_models_file, get_detector

    def boxes_of(detector):
        return lambda image: [face.box for face in detector.detect(image)]

    cnn = dlib.cnn_face_detection_model_v1(str(_face_recognition_models_file("mmod_human_face_detector.dat")))
    haar_alt2 = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_alt2.xml")
    return {
        "yunet": boxes_of(get_detector("yunet")),
        "dlib": boxes_of(get_detector("dlib")),
        # main before issue 14: always one dlib upsampling of the full image
        "dlib (upsample always)": boxes_of(DlibDetector(working_size=10**6)),
        "dlib-cnn (mmod, full size)": lambda image: [
            (d.rect.left(), d.rect.top(), d.rect.width(), d.rect.height()) for d in cnn(image, 0)
        ],
        "haar": boxes_of(get_detector("haar")),
        "haar alt2 cascade": lambda image: [
            tuple(box) for box in haar_alt2.detectMultiScale(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), 1.1, 5, minSize=(30, 30))
        ],
    }


def _found(boxes, truth) -> int:
    """Truth boxes (x, y, w, h) with exactly one detected box centre inside."""
    return int(
        sum(sum(x <= bx + bw / 2 <= x + w and y <= by + bh / 2 <= y + h for bx, by, bw, bh in boxes) == 1 for x, y, w, h in truth)
    )


def _timed(function, items: list) -> tuple[list, float, float]:
    """``[function(item) for item in items]`` and its wall and CPU milliseconds per item."""
    started, started_cpu = time.perf_counter(), time.process_time()
    results = [function(item) for item in items]
    return (
        results,
        round(1000 * (time.perf_counter() - started) / len(items), 1),
        round(1000 * (time.process_time() - started_cpu) / len(items), 1),
    )


def detector_table(skip_slow: bool = False) -> dict:
    """Per detector: group photo found/5 (and extra boxes), portraits found per size, LFW rates; wall and CPU ms per image."""
    group, truth = group_photo()
    sets = portraits()
    lfw = lfw_images()
    results = {}
    for name, detect in _candidates().items():
        slow = name.startswith("dlib-cnn")
        if slow and skip_slow:
            continue
        row = {}
        (boxes,), row["group_ms"], row["group_cpu_ms"] = _timed(detect, [group])
        row["group_found"], row["group_extra"] = _found(boxes, truth), len(boxes) - _found(boxes, truth)
        for size, images in sets.items():
            images = images[:4] if slow else images  # the CNN takes seconds an image: the four sharp portraits
            counts, row[f"{size}_ms"], row[f"{size}_cpu_ms"] = _timed(lambda image, detect=detect: len(detect(image)), images)
            row[f"{size}_found"] = f"{sum(int(count) == 1 for count in counts)}/{len(images)}"
        if not slow:
            found, row["lfw_ms"], row["lfw_cpu_ms"] = _timed(lambda image, detect=detect: len(detect(image)) > 0, lfw)
            row["lfw_faces_found"], row["lfw_nonfaces_rejected"] = float(np.mean(found[:100])), float(1 - np.mean(found[100:]))
        results[name] = row
        print(name, json.dumps(row), flush=True)
    return results


def _write_inputs(folder: Path, lfw_count: int, video_frames: int) -> dict:
    """Portrait JPEGs and a slow-motion 640x480 video in ``folder`` (each tree writes its own checkpoint)."""

    paths: dict = {}
    for size, images in portraits(lfw_count).items():
        (folder / size).mkdir()
        paths[size] = []
        for number, image in enumerate(images):
            path = folder / size / f"{number:02d}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
            paths[size].append(str(path))
    head = cv2.resize(group_photo()[0][150:560, 0:270], (240, 364), interpolation=cv2.INTER_AREA)  # the astronaut
    video = folder / "slow.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (640, 480))
    for index in range(video_frames):
        frame = np.full((480, 640, 3), 170, dtype=np.uint8)
        shift = np.float32([[1, 0, 100 + 2.5 * index], [0, 1, 60 + 8 * np.sin(index / 10)]])
        writer.write(
            cv2.cvtColor(cv2.warpAffine(head, shift, (640, 480), dst=frame, borderMode=cv2.BORDER_TRANSPARENT), cv2.COLOR_RGB2BGR)
        )
    writer.release()
    paths["video"] = str(video)
    return paths


def _random_checkpoint(path: Path, model: str) -> Path:
    """A random-init checkpoint written by the ``auformer`` of this process, so each tree reads its own format.

    Trees before issue 9 called a random backbone ``None`` (their ``build_model`` default).
    """
    import inspect

    import torch

    import auformer

    options = dict(MODELS[model])
    if inspect.signature(auformer.build_model).parameters["backbone_weights"].default is None:
        options["backbone_weights"] = None
    torch.manual_seed(0)
    auformer.save_checkpoint(auformer.build_model(12, aus=list(auformer.aus.BP4D_AUS), **options), path)
    return path


def _best(run, repeats: int) -> dict:
    """Best of ``repeats`` calls of ``run() -> items``: items per wall second and per CPU second."""
    wall, cpu = 0.0, 0.0
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        items = run()
        wall = max(wall, items / (time.perf_counter() - started))
        cpu = max(cpu, items / (time.process_time() - started_cpu))
    return {"per_s": round(wall, 2), "per_cpu_s": round(cpu, 2)}


def worker(job: dict) -> dict:
    """One throughput timing in this process, with the ``auformer`` on ``sys.path`` (this tree or ``--before-src``)."""
    import inspect

    import torch

    from auformer.detect import Detector, Frame, read_image

    checkpoint = Path(job["checkpoint"])  # one per tree, written by the first of its jobs
    if not any(checkpoint.parent.glob(f"{checkpoint.name}.*")):
        _random_checkpoint(checkpoint, job["model"])
    if job["kind"] == "cli":
        return _cli_run(job, checkpoint)
    torch.set_num_threads(job["threads"])
    options = {"batch_size": job["batch_size"]}
    if job.get("detect_every") is not None:
        options["detect_every"] = job["detect_every"]
    if job.get("amp"):
        options["amp"] = job["amp"]
    detector = Detector(checkpoint, **options)
    default = inspect.signature(Detector).parameters["face_detector"].default
    faces = []  # faces found per timed run
    if job["kind"] == "images":

        def run() -> int:
            frames = (Frame(path, 0, 0.0, read_image(path)) for path in job["paths"])
            tables = [table for table, _ in detector.iter_results(frames)]
            faces.append(sum(int(table["success"].sum()) for table in tables))
            return sum(len(table) for table in tables)

        list(detector.iter_results([Frame(p, 0, 0.0, read_image(p)) for p in job["paths"][:2]]))  # warm-up
    else:

        def run() -> int:
            return len(detector.detect_video(job["paths"][0]))

    timing = _best(run, job["repeats"])
    if faces:
        timing["faces_found"] = f"{faces[-1]}/{len(job['paths'])}"
    timing["face_detector"] = default
    return timing


def _cli_run(job: dict, checkpoint: Path) -> dict:
    """``auformer detect FOLDER`` once, as a user runs it (torch's default threads): photos per wall second, and
    the command's CPU seconds (user + system; on a shared machine both move with the machine's own speed)."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    out = Path(job["out"])
    started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-m", "auformer", "detect", job["paths"][0], "--checkpoint", str(checkpoint), "--out", str(out)],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    wall, after = time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    rows = len((out / "images.csv").read_text().splitlines()) - 1
    return {"seconds": round(wall, 2), "per_s": round(rows / wall, 2), "cpu_s": round(cpu, 2), "photos": rows}


def cli_table(model: str, repeats: int, before_src: Path | None, photos: int = 283) -> dict:
    """``auformer detect`` on ``photos`` portraits, start-up included: this tree and ``before_src`` alternating,
    best of ``repeats`` each."""
    trees = {"after": ROOT / "src"} | ({"before": before_src} if before_src else {})
    results: dict = {tree: [] for tree in trees}
    with tempfile.TemporaryDirectory() as folder:
        images = portraits(100)["640x490"]
        (Path(folder) / "photos").mkdir()
        for number in range(photos):
            path = Path(folder) / "photos" / f"{number:03d}.jpg"
            cv2.imwrite(str(path), cv2.cvtColor(images[number % len(images)], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        for run_number in range(repeats):
            for tree, src in trees.items():
                job = {
                    "kind": "cli", "model": model, "threads": 1, "paths": [str(Path(folder) / "photos")],
                    "checkpoint": str(Path(folder) / f"model-{tree}"), "out": str(Path(folder) / f"out-{tree}-{run_number}"),
                }  # fmt: skip
                results[tree].append(_in_subprocess(job, src))
                print("cli", tree, json.dumps(results[tree][-1]), flush=True)
    return {
        tree: {
            **max(runs, key=lambda run: run["per_s"]),
            "runs_s": [run["seconds"] for run in runs],
            "runs_cpu_s": [run["cpu_s"] for run in runs],
        }
        for tree, runs in results.items()
    }


def _in_subprocess(job: dict, src: Path) -> dict:
    """``worker(job)`` in a fresh Python whose ``auformer`` is the one in ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(job["threads"])}
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(job)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({src}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def throughput_table(
    model: str,
    batch_size: int,
    repeats: int,
    threads: int,
    before_src: Path | None,
    amp: str = "none",
    lfw_count: int = 20,
    video_frames: int = 100,
) -> dict:
    """Images/s on the portraits and frames/s on the video, this tree (and ``before_src``), alternating.

    ``amp`` applies to this tree only (the code before issue 14 had no ``amp``).
    """
    trees = {"after": ROOT / "src"} | ({"before": before_src} if before_src else {})
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = _write_inputs(Path(folder), lfw_count, video_frames)
        base = {"model": model, "batch_size": batch_size, "repeats": repeats, "threads": threads}
        jobs = {f"{size} photos": {**base, "kind": "images", "paths": paths[size]} for size in ("640x490", "256x256")}
        jobs["640x480 video, detect every frame"] = {**base, "kind": "video", "paths": [paths["video"]], "detect_every": 1}
        jobs["640x480 video, detect every 5th frame"] = {**base, "kind": "video", "paths": [paths["video"]], "detect_every": 5}
        for name, job in jobs.items():
            for tree, src in trees.items():
                if tree == "before" and job.get("detect_every") == 5:
                    continue  # the old code has no tracking
                run_job = {**job, "checkpoint": str(Path(folder) / f"model-{tree}")}  # written once per tree
                if tree == "after" and amp != "none":
                    run_job["amp"] = amp
                if tree == "before":
                    run_job.pop("detect_every", None)
                results.setdefault(name, {})[tree] = _in_subprocess(run_job, src)
                print(name, tree, json.dumps(results[name][tree]), flush=True)
    return results


def to_markdown(results: dict) -> str:
    """The tables of ``results`` as Markdown."""
    lines = []
    if "detectors" in results:
        lines += [
            "ms per image: wall / CPU",
            "",
            "| detector | group photo found (extra) | ms | 640x490 found | ms | 256x256 found | ms "
            "| LFW faces found | non-faces rejected | ms |",
            "|" + " --- |" * 10,
        ]
        for name, row in results["detectors"].items():
            ms = {
                key: f"{row[key + '_ms']} / {row[key + '_cpu_ms']}" if key + "_ms" in row else "-"
                for key in ("group", "640x490", "256x256", "lfw")
            }
            lines.append(
                f"| {name} | {row['group_found']}/5 ({row['group_extra']}) | {ms['group']} "
                f"| {row['640x490_found']} | {ms['640x490']} | {row['256x256_found']} | {ms['256x256']} "
                f"| {row.get('lfw_faces_found', '-')} | {row.get('lfw_nonfaces_rejected', '-')} | {ms['lfw']} |"
            )
        lines.append("")
    if "throughput" in results:
        lines += [
            f"model {results['model']}, batch {results['batch_size']}, threads {results['threads']}, "
            f"amp {results['amp']} (this tree)",
            "",
            "| input | code | face detector | per s | per CPU s | faces found |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, trees in results["throughput"].items():
            for tree, row in trees.items():
                lines.append(
                    f"| {name} | {tree} | {row['face_detector']} | {row['per_s']} | {row['per_cpu_s']} "
                    f"| {row.get('faces_found', '-')} |"
                )
    if "cli" in results:
        lines += [
            "",
            f"`auformer detect FOLDER` on {next(iter(results['cli'].values()))['photos']} portraits, start-up included, "
            f"model {results['model']}, best of the runs",
            "",
            "| code | photos/s | seconds | every run (s) | CPU s, every run |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {tree} | {row['per_s']} | {row['seconds']} | {', '.join(map(str, row['runs_s']))} "
            f"| {', '.join(map(str, row['runs_cpu_s']))} |"
            for tree, row in results["cli"].items()
        ]
    return "\n".join(lines) + "\n"


def run(
    out_dir: str | os.PathLike,
    model: str = "synthetic",
    batch_size: int = 16,
    repeats: int = 3,
    threads: int = 1,
    parts: tuple[str, ...] = ("detectors", "throughput"),
    before_src: str | None = None,
    skip_slow: bool = False,
    amp: str = "none",
    lfw_count: int = 20,
    video_frames: int = 100,
    cli_photos: int = 283,
) -> dict:
    """Run the ``parts``, write ``OUT/bench_detect.json`` and ``OUT/bench_detect.md``, return the results."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "model": model,
        "batch_size": batch_size,
        "threads": threads,
        "amp": amp,
        "load_average_before": os.getloadavg(),
    }
    if "detectors" in parts:
        results["detectors"] = detector_table(skip_slow)
    if "throughput" in parts:
        results["throughput"] = throughput_table(
            model, batch_size, repeats, threads, Path(before_src) if before_src else None, amp, lfw_count, video_frames
        )
    if "cli" in parts:
        results["cli"] = cli_table(model, repeats, Path(before_src) if before_src else None, cli_photos)
    results["load_average_after"] = os.getloadavg()
    (out / "bench_detect.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_detect.md").write_text(to_markdown(results))
    print(to_markdown(results))
    print(f"wrote {out / 'bench_detect.json'} and {out / 'bench_detect.md'}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", metavar="DIR", help="folder for bench_detect.json and bench_detect.md (required)")
    parser.add_argument("--model", default="synthetic", choices=MODELS, help="model to time (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="faces per model batch (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per number, best kept (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch and OpenMP threads; 1 avoids OpenMP spin-waits between the pipeline threads (default: %(default)s)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["detectors", "throughput"],
        choices=("detectors", "throughput", "cli"),
        help="what to measure (default: detectors throughput)",
    )
    parser.add_argument(
        "--before-src",
        default=None,
        metavar="DIR",
        help="also time the auformer package in DIR (e.g. /work/main/src), alternating with this tree",
    )
    parser.add_argument("--skip-slow", action="store_true", help="leave out dlib's CNN detector (seconds per image)")
    parser.add_argument(
        "--amp", default="none", choices=("none", "bf16"), help="autocast for this tree's network (default: %(default)s)"
    )
    parser.add_argument(
        "--lfw-portraits",
        type=int,
        default=20,
        help="LFW faces among the portraits of each size, after the 4 sharp ones (default: %(default)s)",
    )
    parser.add_argument("--video-frames", type=int, default=100, help="frames of the timed video (default: %(default)s)")
    parser.add_argument("--cli-photos", type=int, default=283, help="portraits for the cli part (default: %(default)s)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one timing as JSON, for a subprocess
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if not args.out:
        parser.error("--out DIR is required")
    run(
        args.out,
        args.model,
        args.batch_size,
        args.repeats,
        args.threads,
        tuple(args.parts),
        args.before_src,
        args.skip_slow,
        args.amp,
        args.lfw_portraits,
        args.video_frames,
        args.cli_photos,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
