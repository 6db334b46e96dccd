"""Expert overhead: AUFormer's forward against the plain frozen ViT and against a Swin-B, side by side.

The models run interleaved (one forward of each in turn, repeated), so load changes on
a shared machine hit all of them alike; medians of wall time and of process CPU time
are reported, with each model's ratio to the plain ViT. CPU time is the steadier
figure on a busy machine (it does not count time spent waiting for a core).

- ``vit``: the frozen timm ViT alone (the AUFormer's own backbone);
- ``auformer``: the same ViT with the fused expert groups and heads (12 AUs);
- ``swin_b``: timm ``swin_base_patch4_window7_224`` with random init, standing in for
  ME-GraphAU's Swin-B backbone (its graph head not included).

    python benchmarks/bench_overhead.py                       # ViT-B/16, 12 AUs, batch 4, fp32, CPU
    python benchmarks/bench_overhead.py --batch 1 --dtype bf16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import timm
import torch

from auformer.model import build_model


def build_models(num_aus: int, backbone: str, swin: bool) -> dict[str, torch.nn.Module]:
    """``vit``, ``auformer`` (same backbone object) and optionally ``swin_b``, in eval mode."""
    torch.manual_seed(0)
    model = build_model(num_aus, backbone, "random").eval()  # speed only: the weights' values do not matter
    models = {"vit": model.backbone, "auformer": model}
    if swin:
        models["swin_b"] = timm.create_model("swin_base_patch4_window7_224", pretrained=False).eval()
    return models


def interleaved_times(calls: dict[str, Callable[[], object]], iters: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each call, run in turn (one of each, repeated), so that load changes on
    a shared machine hit them alike; the first ``warmup`` rounds are not counted."""
    times = {name: ([], []) for name in calls}
    for step in range(warmup + iters):
        for name, call in calls.items():
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            if step >= warmup:
                times[name][0].append(time.perf_counter() - wall)
                times[name][1].append(time.process_time() - cpu)
    return {name: {"wall_s": statistics.median(w), "cpu_s": statistics.median(c)} for name, (w, c) in times.items()}


def forward_times(
    models: dict[str, torch.nn.Module],
    batch: int,
    img_size: int,
    iters: int,
    warmup: int = 1,
    dtype: str = "fp32",
    reference: str = "vit",
) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds per no-grad forward of each model, interleaved; ratios to ``reference``
    (``wall_vs_vit`` / ``cpu_vs_vit`` keep their names, the overhead table's)."""
    images = torch.randn(batch, 3, img_size, img_size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        results = interleaved_times({name: partial(model, images) for name, model in models.items()}, iters, warmup)
    for result in results.values():
        result["wall_vs_vit"] = result["wall_s"] / results[reference]["wall_s"]
        result["cpu_vs_vit"] = result["cpu_s"] / results[reference]["cpu_s"]
    return results


def print_times(results: dict[str, dict[str, float]], prefix: str = "", reference: str = "vit") -> None:
    """One line per model of `forward_times`' results."""
    for name, r in results.items():
        print(
            f"{prefix}{name:>9}: {r['wall_s'] * 1e3:8.1f} ms wall ({r['wall_vs_vit']:.3f}x {reference}), "
            f"{r['cpu_s'] * 1e3:8.1f} ms CPU ({r['cpu_vs_vit']:.3f}x {reference})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_base_patch16_224", help="timm ViT (default: %(default)s)")
    parser.add_argument("--num-aus", type=int, default=12, help="number of AUs N (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    parser.add_argument("--iters", type=int, default=5, help="timed forwards per model (default: %(default)s)")
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="fp32, or bf16 autocast (default: %(default)s)")
    parser.add_argument("--no-swin", action="store_true", help="skip the Swin-B comparison")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args.num_aus, args.backbone, not args.no_swin)
    results = forward_times(models, args.batch, 224, args.iters, dtype=args.dtype)
    print_times(results)


if __name__ == "__main__":
    main()
