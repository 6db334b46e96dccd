"""One entry point for the benchmarks: ``python -m benchmarks`` (from the repository root).

Runs the tables that docs/performance.md reports and writes them as Markdown
(``results.md``) and JSON (``results.json``) to the folder it names:

- ``overhead``: AUFormer (fused experts, 12 AUs) forward vs the plain frozen ViT-B/16 and vs a
  Swin-B (timm ``swin_base_patch4_window7_224``, random init, standing in for ME-GraphAU's),
  at batch 1, 4 and 16 (``--batch``), interleaved, medians (`bench_overhead.py`);
- ``first-run``: ``auformer train`` with no arguments, as a new user runs it, beside the previous
  default's settings (`PREVIOUS_DEFAULT`), one after the other (wall time, CPU time, mean F1), then
  the fp32 and int8 agreement of the default's model with PyTorch on the test set
  (`bench_runtime.agreement`);
- ``runtime``: PyTorch against ONNX Runtime fp32 and int8 (``export --quantize int8``) on the
  synthetic model and ViT-B/16, batch 1 and 4, interleaved (`bench_runtime.py`), and the faces/s
  this CPU's matrix products allow ViT-B at most (`bench_runtime.ceiling`);
- ``loader``: data-loader images/s over generated JPEG face crops (`bench_loader.py`);
- ``detect``: `bench_detect.py`'s face-detector, ``auformer detect`` throughput and command (start-up included) tables
  (its own files under ``out/detect``);
- ``gpu``: ViT-B/16 training and inference images/s (bf16) on a CUDA device, the loader beside them and
  the BP4D 3-fold CV time they imply (`bench_gpu.py`); "not measured" where there is no CUDA device.

    python -m benchmarks                                  # everything, into runs/benchmarks-<UTC time>
    python -m benchmarks --tables overhead --quick --out /tmp/bench
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

import torch

from auformer.files import atomic_write_text

TABLES = ("overhead", "runtime", "first-run", "loader", "detect", "gpu")


def run_overhead(args: argparse.Namespace) -> dict:
    from benchmarks.bench_overhead import build_models, forward_times

    models = build_models(12, "vit_base_patch16_224", swin=True)
    iters = 2 if args.quick else args.iters
    return {
        "dtype": "fp32",
        "iters": iters,
        "threads": torch.get_num_threads(),
        "batches": {batch: forward_times(models, batch, 224, iters) for batch in args.batch},
    }


def run_runtime(args: argparse.Namespace) -> dict:
    from benchmarks.bench_runtime import ceiling, compare

    iters = 2 if args.quick else args.iters
    models = ["synthetic"] if args.quick else ["synthetic", "vit_b"]
    return {
        "iters": iters,
        "threads": torch.get_num_threads(),
        "models": {m: compare(m, [1, 4], iters) for m in models},
        "ceiling": ceiling(iters=iters),
    }


# The default run's settings before issue 24 ("fewer, better steps"), timed beside today's default.
PREVIOUS_DEFAULT = ["train.epochs=5", "train.lr=5.0e-3", "train.head_lr=null", "train.warmup_epochs=0.5"]


def _train_once(out: Path, settings: list[str]) -> dict:
    """``auformer train [--set S ...]`` in a fresh process, as a new user runs it: wall, CPU, mean F1."""
    command = [sys.executable, "-m", "auformer", "train", "--out", str(out)] + [a for s in settings for a in ("--set", s)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    log = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    shown = "auformer train" + "".join(f" --set {s}" for s in settings)
    if log.returncode:
        return {"command": shown, "error": log.stderr.strip().splitlines()[-1:]}
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "command": shown,
        "wall_s": wall,
        "cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "mean_f1": metrics["mean_f1"],
        "output_lines": len(log.stdout.splitlines()) + len(log.stderr.splitlines()),
    }


def run_first_run(args: argparse.Namespace, out: Path) -> dict:
    """The no-argument ``auformer train`` beside the previous default's settings, one after the other
    (outputs under ``out/first_run``); ``--quick`` runs one epoch of today's default only."""
    if args.quick:
        return {"runs": {"default": _train_once(out / "first_run" / "default", ["train.epochs=1"])}}
    load = round(os.getloadavg()[0], 2)
    runs = {
        "previous default": _train_once(out / "first_run" / "previous", PREVIOUS_DEFAULT),
        "default": _train_once(out / "first_run" / "default", []),
    }
    result = {"runs": runs, "load_before": load, "load_after": round(os.getloadavg()[0], 2)}
    if "wall_s" in runs["default"]:
        from benchmarks.bench_runtime import agreement

        result["agreement"] = agreement(out / "first_run" / "default" / "last")
    return result


def run_loader(args: argparse.Namespace) -> dict:
    from benchmarks.bench_loader import images_per_second, make_jpegs

    count = 128 if args.quick else 512
    with tempfile.TemporaryDirectory() as tmp:
        table = make_jpegs(Path(tmp), count)
        rates = {
            f"{mode}, {workers} workers": images_per_second(table, workers, 32, 224, mode == "train", 1)
            for mode in ("train", "test")
            for workers in (0, 2)
        }
    return {"images": count, "images_per_s": rates}


def run_detect(args: argparse.Namespace, out: Path) -> dict:
    """`bench_detect.run`'s results (its tables belong to it; it also writes them to ``out/detect``)."""
    from benchmarks.bench_detect import run

    parts = ("detectors", "throughput", "cli")
    if args.quick:  # no dlib CNN, 4 + 2 portraits a size, a 20-frame video, 12 photos for the command, one run each
        return run(out / "detect", repeats=1, parts=parts, skip_slow=True, lfw_count=2, video_frames=20, cli_photos=12)
    return run(out / "detect", parts=parts)


def run_gpu(args: argparse.Namespace, out: Path) -> dict:
    """`bench_gpu.run`'s figures with its defaults (``--quick``: its smoke run), or why there are none."""
    from benchmarks.bench_gpu import NO_CUDA, build_parser, run

    if not torch.cuda.is_available():
        return {"not_measured": NO_CUDA}
    return run(build_parser().parse_args(["--out", str(out / "gpu"), *(["--quick"] if args.quick else [])]))


def _table(heading: str, columns: list[str], rows: list[str]) -> list[str]:
    """Markdown lines: ``heading``, a table of ``columns`` over the ready-made ``rows`` ("| a | b |")."""
    return [heading, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), *rows]


def markdown(results: dict) -> str:
    """The results as Markdown tables (JSON blocks for what has no fixed shape)."""
    lines = [f"# Benchmarks ({results['date']}, {results['machine']})", ""]
    if "overhead" in results:
        o = results["overhead"]
        lines += _table(
            f"## Forward time, {o['dtype']}, {o['threads']} threads, medians of {o['iters']} (interleaved)",
            ["batch", "model", "wall ms", "vs ViT", "CPU ms", "vs ViT"],
            [
                f"| {batch} | {name} | {r['wall_s'] * 1e3:.0f} | {r['wall_vs_vit']:.3f}x | {r['cpu_s'] * 1e3:.0f} "
                f"| {r['cpu_vs_vit']:.3f}x |"
                for batch, models in o["batches"].items()
                for name, r in models.items()
            ],
        ) + [""]
    if "runtime" in results:
        r = results["runtime"]
        lines += [
            f"## Inference runtimes, fp32 input, {r['threads']} threads, medians of {r['iters']} (interleaved)",
            "",
            "| model | batch | runtime | wall ms | vs torch | CPU ms | vs torch |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {model} | {batch} | {name} | {t['wall_s'] * 1e3:.0f} | {t['wall_vs_vit']:.2f}x | {t['cpu_s'] * 1e3:.0f} "
            f"| {t['cpu_vs_vit']:.2f}x |"
            for model, batches in r["models"].items()
            for batch, times in batches.items()
            for name, t in times.items()
        ] + [""]
        c = r["ceiling"]
        lines += _table(
            f"What this CPU's matrix products allow a ViT-B/16 AUFormer ({c['face_gflops']:.1f} GFLOPs a face):",
            ["runtime", "GFLOP/s, (788 x 768) x (768 x 3072)", "faces/s at most"],
            [
                f"| {name} | {row['gflops_per_s']:.1f} | {row['faces_per_s_at_most']:.1f} |"
                for name, row in c.items()
                if name != "face_gflops"
            ],
        ) + [""]
    if "first-run" in results:
        r = results["first-run"]
        load = f", load average {r['load_before']} before, {r['load_after']} after" if "load_before" in r else ""
        lines += [f"## First run (one after the other{load})", ""]
        for name, run in r["runs"].items():
            summary = (
                f"{run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} s CPU, mean F1 {run['mean_f1']:.3f}, {run['output_lines']} output lines"
                if "wall_s" in run
                else f"failed: {run['error']}"
            )
            lines += [f"- {name}: `{run['command']}`: {summary}"]
        lines += [""]
        if "agreement" in r:
            lines += _table(
                "Agreement of the default's model with PyTorch, synthetic test set (int8 row: int8 agreement on the trained default model):",
                ["runtime", "max abs p diff", "mean abs p diff", "max per-AU F1 diff"],
                [
                    f"| {name} | refused by the export's check: {a['refused']} | | |"
                    if "refused" in a
                    else f"| {name} | {a['max_abs']:.2e} | {a['mean_abs']:.2e} | {a['max_f1_diff']:.3f} |"
                    for name, a in r["agreement"].items()
                ],
            ) + [""]
    if "loader" in results:
        r = results["loader"]
        lines += [f"## Loader ({r['images']} JPEGs, 224 px, batch 32)", "", "| transform, workers | images/s |", "|---|---|"]
        lines += [f"| {name} | {rate:.0f} |" for name, rate in r["images_per_s"].items()] + [""]
    if "detect" in results:
        lines += ["## Detection (benchmarks/bench_detect.py)", "", "```json", json.dumps(results["detect"], indent=2), "```", ""]
    if "gpu" in results:
        from benchmarks.bench_gpu import markdown as gpu_markdown

        gpu = results["gpu"]
        lines += ["## GPU (benchmarks/bench_gpu.py)", "", gpu.get("not_measured") or gpu_markdown(gpu), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="folder for results.md and results.json (default: runs/benchmarks-<UTC time>)"
    )
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES, help="tables to run (default: all)")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[1, 4, 16], help="batch sizes of the forward comparison (default: 1 4 16)"
    )
    parser.add_argument("--iters", type=int, default=5, help="timed forwards per model (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="fewer iterations, one training epoch: a smoke run, not figures")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or f"runs/benchmarks-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    out.mkdir(parents=True, exist_ok=True)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{torch.get_num_threads()} torch threads, CUDA {'yes' if torch.cuda.is_available() else 'no'}",
        "quick": args.quick,
    }
    runners = {
        "overhead": lambda: run_overhead(args),
        "runtime": lambda: run_runtime(args),
        "first-run": lambda: run_first_run(args, out),
        "loader": lambda: run_loader(args),
        "detect": lambda: run_detect(args, out),
        "gpu": lambda: run_gpu(args, out),
    }
    for table in args.tables:
        print(f"running {table} ...", flush=True)
        results[table] = runners[table]()
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write_text(out / "results.md", markdown(results))
    print(markdown(results))
    print(f"results written to {out}/results.md and {out}/results.json")


if __name__ == "__main__":
    main()
