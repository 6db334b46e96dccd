"""Micro-benchmark of the MoKE expert groups: N experts at the price of one?

Forward+backward time and activation memory of three AUFormer variants on the
same random frozen ViT:

- ``reference``: the literal per-expert groups (N experts, D-wide carries);
- ``fused``: the exact fast groups (grouped ops, d-space carry);
- ``single``: fused groups with one shared expert (``collaborate=False``), the cost floor.

Target (issue 3): fused within 1.15x of single in time and in memory.

Time: the median wall time and the median process CPU time per forward+backward,
measured round-robin across the variants. On a shared CPU machine wall time is
noisy; with ``--threads 1`` the CPU time is the steadier comparison.

Memory: on CPU, the bytes of the distinct tensors autograd saves for backward
(``torch.autograd.graph.saved_tensors_hooks``), parameters excluded: they stay
alive until backward, so their sum is the activation peak that grows with N. On
CUDA also ``torch.cuda.max_memory_allocated``.

    python benchmarks/bench_moke.py                      # ViT-B/16, 12 AUs, batch 8, CPU
    python benchmarks/bench_moke.py --depth 2 --iters 1  # quick run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from auformer.model import build_model

VARIANTS = {
    "reference": dict(moke="reference"),
    "fused": dict(moke="fused"),
    "single": dict(moke="fused", collaborate=False),
}


def saved_activation_bytes(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for backward during one forward."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(images)
    del output
    return sum(saved.values())


def step(model: torch.nn.Module, images: torch.Tensor) -> None:
    output = model(images)
    (output.logits.sum() + output.aux_logits.sum()).backward()
    model.zero_grad(set_to_none=True)


def bench(args: argparse.Namespace, images: torch.Tensor) -> dict[str, dict]:
    """Time the variants round-robin (iteration by iteration), so load changes on a shared machine hit all alike."""
    models, results = {}, {}
    for name in args.variants.split(","):
        torch.manual_seed(0)
        models[name] = (
            build_model(
                args.num_aus,
                args.backbone,
                "random",
                img_size=args.img_size,
                backbone_kwargs=args.backbone_kwargs,
                **VARIANTS[name],
            )
            .to(args.device)
            .train()
        )
        results[name] = {
            "variant": name,
            "saved_activation_mb": saved_activation_bytes(models[name], images) / 1e6,
            "times_s": [],
            "cpu_times_s": [],
        }
        for _ in range(args.warmup):
            step(models[name], images)
        if args.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step(models[name], images)
            results[name]["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 1e6
    for _ in range(args.iters):
        for name, model in models.items():
            start, cpu_start = time.perf_counter(), time.process_time()
            step(model, images)
            if args.device == "cuda":
                torch.cuda.synchronize()
            results[name]["times_s"].append(time.perf_counter() - start)
            results[name]["cpu_times_s"].append(time.process_time() - cpu_start)
    for name, result in results.items():
        result["time_s"] = statistics.median(result["times_s"])
        result["cpu_time_s"] = statistics.median(result["cpu_times_s"])
        print(
            f"{name:>9}: {result['time_s']:.3f} s/iter wall, {result['cpu_time_s']:.3f} s CPU (medians of {args.iters}), "
            f"saved activations {result['saved_activation_mb']:.1f} MB"
            + (f", CUDA peak {result['cuda_peak_mb']:.1f} MB" if "cuda_peak_mb" in result else ""),
            flush=True,
        )
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224", help="timm ViT name (default: %(default)s)")
    parser.add_argument("--num-aus", type=int, default=12, help="number of AUs N (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=224, help="input size (default: %(default)s)")
    parser.add_argument("--depth", type=int, default=None, help="override the ViT depth for a quick run")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations per variant (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default: %(default)s)")
    parser.add_argument(
        "--variants",
        default="reference,fused,single",
        help="comma-separated subset of reference,fused,single (default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        choices=("cpu", "cuda"),
        help="device (default: cuda when available)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", default=None, metavar="DIR", help="also write DIR/bench_moke.json")
    args = parser.parse_args(argv)
    args.backbone_kwargs = {"depth": args.depth} if args.depth else None
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    print(
        f"{args.backbone} depth={args.depth or 'default'} N={args.num_aus} batch={args.batch} "
        f"device={args.device} threads={torch.get_num_threads()} iters={args.iters}",
        flush=True,
    )
    results = bench(args, images)
    if "single" in results:
        for name, result in results.items():
            base = results["single"]
            result["time_vs_single"] = result["time_s"] / base["time_s"]
            result["cpu_time_vs_single"] = result["cpu_time_s"] / base["cpu_time_s"]
            result["memory_vs_single"] = result["saved_activation_mb"] / base["saved_activation_mb"]
            print(
                f"{name:>9}: {result['time_vs_single']:.2f}x wall time, {result['cpu_time_vs_single']:.2f}x CPU time, "
                f"{result['memory_vs_single']:.2f}x memory of single"
            )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        (out / "bench_moke.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
        print(f"wrote {out / 'bench_moke.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
