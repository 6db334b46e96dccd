"""CPU inference runtimes: PyTorch against ONNX Runtime fp32 and int8 (``export --quantize int8``), side by side.

Each model is saved as a checkpoint, exported twice with `auformer.export.export_model`
(fp32, int8; each checked against PyTorch there) and the three forwards run interleaved
(`bench_overhead.forward_times`: one call of each in turn, medians of wall and CPU time),
so load on a shared machine hits them alike. ONNX Runtime gets torch's thread count.

- ``synthetic``: the default preset's model (packaged synthetic ViT, 64 px, 12 AUs);
- ``vit_b``: AUFormer on ViT-B/16, 224 px, 12 AUs, random init (speed only).

``ceiling`` measures what this CPU's matrix products can do at best (one ViT-B MLP product,
(batch x 197, 768) x (768, 3072), in torch fp32 and in ONNX Runtime fp32 and int8, the way the
int8 export runs it) and the faces/s that bounds a ViT-B/16 AUFormer to (its FLOPs from
`auformer.model.profile.count_flops` over that rate): no runtime goes past it.

``agreement`` compares the probabilities of a trained synthetic checkpoint (``auformer train``'s
``last``) on its preset's test set (1000 faces): PyTorch against ONNX Runtime fp32 and int8.

    python benchmarks/bench_runtime.py --batch 1 4
    python benchmarks/bench_runtime.py --agreement runs/synthetic-.../last
    python benchmarks/bench_runtime.py --ceiling
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

import auformer
from auformer.config.presets import load_config
from auformer.data.synthetic import SYNTHETIC_AUS
from auformer.detect import Detector
from auformer.detect.runtime import OnnxRuntimeModel, cpu_session
from auformer.engine.build import build_splits, load_source, model_from_config
from auformer.errors import AUFormerError
from auformer.export import export_model
from auformer.metrics import au_metrics
from benchmarks.bench_overhead import forward_times, interleaved_times, print_times


def _models(name: str) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    if name == "synthetic":
        return model_from_config(load_config("synthetic"), list(SYNTHETIC_AUS), "synthetic").eval(), 64
    return auformer.build_model(12, "vit_base_patch16_224", "random", aus=list(SYNTHETIC_AUS)).eval(), 224


def compare(name: str, batches: list[int], iters: int) -> dict:
    """``{batch: forward_times(...)}`` for ``torch``, ``onnx_fp32``, ``onnx_int8`` and ``vit``; the ``*_vs_vit``
    ratios are to ``torch`` here."""
    model, size = _models(name)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / name
        auformer.save_checkpoint(model, checkpoint)
        sessions = {q: OnnxRuntimeModel(export_model(checkpoint, tmp, quantize=q)) for q in ("none", "int8")}
        runners = {
            "torch": model,
            "onnx_fp32": sessions["none"],
            "onnx_int8": sessions["int8"],
            "vit": model.backbone,  # the plain ViT, for scale
        }
        return {batch: forward_times(runners, batch, size, iters, reference="torch") for batch in batches}


def agreement(checkpoint: str | Path) -> dict:
    """``{runtime: {"max_abs", "mean_abs", "max_f1_diff"}}``: ONNX Runtime fp32 and int8 against PyTorch, the
    probabilities of the synthetic preset's test split (fold 0) and the per-AU F1 at 0.5; ``{"refused": why}``
    where `export_model`'s own check (random images, 1e-4 / 0.02) refuses the file."""
    config = load_config("synthetic")
    source = load_source(config)
    test = build_splits(config, source).test
    crops = list(source.pixels[[int(Path(name).stem) for name in test.images]])  # (64, 64, 3) uint8 each
    reference = Detector(checkpoint, face_detector="none", batch_size=100).predict_crops(crops)  # (M, N)

    def per_au_f1(probabilities: np.ndarray) -> np.ndarray:
        return np.array([row["f1"] for row in au_metrics(probabilities, test.labels, test.aus)["per_au"].values()])

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for quantize in ("none", "int8"):
            try:
                path = export_model(checkpoint, tmp, quantize=quantize)
            except AUFormerError as error:  # the export's own check refused it: that is the row's result
                results["onnx_fp32" if quantize == "none" else "onnx_int8"] = {"refused": str(error).split(": ", 1)[-1]}
                continue
            detector = Detector(path, face_detector="none", batch_size=100, runtime="onnxruntime")
            probabilities = detector.predict_crops(crops)
            difference = np.abs(probabilities - reference)
            results["onnx_fp32" if quantize == "none" else "onnx_int8"] = {
                "max_abs": float(difference.max()),
                "mean_abs": float(difference.mean()),
                "max_f1_diff": float(np.abs(per_au_f1(probabilities) - per_au_f1(reference)).max()),
            }
    return results


def ceiling(batch: int = 4, iters: int = 10) -> dict:
    """GFLOP/s of one ViT-B MLP matrix product on this CPU (torch fp32, ONNX Runtime fp32 and int8) and the
    ViT-B/16 AUFormer faces/s each rate allows (its forward FLOPs / rate: an upper bound, all else free)."""
    from auformer.model.profile import count_flops

    layer = torch.nn.Linear(768, 3072).eval()  # fc1 of a ViT-B block: the model's largest products
    tokens = torch.randn(batch * 197, 768)
    with torch.device("meta"):
        model = auformer.build_model(12, "vit_base_patch16_224", "random")
    face_flops = count_flops(model.eval(), torch.empty(1, 3, 224, 224, device="meta"))
    with tempfile.TemporaryDirectory() as tmp:
        fp32, int8 = Path(tmp) / "fc1.onnx", Path(tmp) / "fc1.int8.onnx"
        torch.onnx.export(layer, (tokens,), fp32, input_names=["x"], dynamo=False)
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)  # as export
        sessions = {name: cpu_session(path) for name, path in (("onnx_fp32", fp32), ("onnx_int8", int8))}
        feed = {"x": tokens.numpy()}
        calls = {"torch": partial(layer, tokens), **{name: partial(s.run, None, feed) for name, s in sessions.items()}}
        with torch.no_grad():
            times = interleaved_times(calls, iters)
    flops = 2 * tokens.shape[0] * 768 * 3072
    rates = {name: flops / t["wall_s"] / 1e9 for name, t in times.items()}
    return {
        "face_gflops": face_flops / 1e9,
        **{name: {"gflops_per_s": rate, "faces_per_s_at_most": rate * 1e9 / face_flops} for name, rate in rates.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["synthetic", "vit_b"], choices=["synthetic", "vit_b"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--ceiling", action="store_true", help="print this CPU's matrix-product rate and ViT-B's bound only")
    parser.add_argument("--agreement", metavar="CKPT", help="a trained synthetic checkpoint: print its agreement only")
    args = parser.parse_args()
    if args.ceiling:
        result = ceiling()
        print(f"ViT-B/16 AUFormer: {result.pop('face_gflops'):.1f} GFLOPs a face")
        for name, row in result.items():
            print(
                f"{name}: {row['gflops_per_s']:.1f} GFLOP/s on (788 x 768) x (768 x 3072): at most {row['faces_per_s_at_most']:.1f} faces/s"
            )
        return
    if args.agreement:
        for name, row in agreement(args.agreement).items():
            print(name, row.get("refused") or " ".join(f"{key} {value:.2e}" for key, value in row.items()))
        return
    for name in args.models:
        for batch, times in compare(name, args.batch, args.iters).items():
            print_times(times, f"{name} batch {batch} ", reference="torch")


if __name__ == "__main__":
    main()
