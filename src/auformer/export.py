"""Export a checkpoint to ONNX or TorchScript: one self-contained file, checked against PyTorch.

The exported graph holds the backbone, the experts and the main head and maps
normalised images ``(B, 3, S, S)`` (S fixed, the model's input size; B free) to AU
probabilities ``(B, N)``. A JSON file beside it records the AU names and the
preprocessing (aligned face crop, resize + centre crop, mean/std) a caller must apply.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from auformer.aus import au_columns
from auformer.data.transforms import default_resize_size
from auformer.errors import AUFormerError
from auformer.files import atomic_path
from auformer.model.checkpoint import checkpoint_paths, load_checkpoint, read_checkpoint_meta

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # max |probability difference| between the export and PyTorch


class AUProbabilities(nn.Module):
    """AUFormer reduced to what deployment needs: images -> sigmoid of the main head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(images).logits)  # (B, N)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript-based exporter (dynamo=False): 10x faster than the dynamo exporter on
    # CPU (5 s against 50 s for a tiny ViT, measured); export_model checks its output anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}}, opset_version=18, dynamo=False)


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit's deprecation notices; the result is checked against PyTorch anyway
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))


def _run_export(format: str, path: Path, images: torch.Tensor) -> np.ndarray:
    """Probabilities from the exported file, loaded fresh (ONNX Runtime for ONNX)."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["probabilities"], {"images": images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path)).eval()(images).detach().numpy()


def export_model(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, format: str = "onnx",
                 backbone_weights: str | None = None) -> Path:
    """Write ``OUT_DIR/NAME.onnx`` (or ``.pt``) and its description ``NAME.onnx.json``; returns the model path.

    The model is exported with a batch of 2 and run on a batch of 3 random images,
    which must match PyTorch within ``TOLERANCE`` (this also checks the free batch
    size), else ``ValueError`` and no file is left behind.
    """
    if format not in FORMATS:
        raise AUFormerError(f"unknown export format {format!r}: valid formats are {', '.join(FORMATS)}")
    model = load_checkpoint(checkpoint, backbone_weights=backbone_weights).eval()
    module = AUProbabilities(model).eval()
    size = model.data_config["input_size"][-1]
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))  # (3, 3, S, S)
    with torch.no_grad():
        expected = module(images).numpy()  # (B, N)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_paths(checkpoint)[0].stem
    path = out_dir / f"{name}{FORMATS[format]}"
    with atomic_path(path) as tmp:  # a model that fails the check never replaces the file
        (_export_onnx if format == "onnx" else _export_torchscript)(module, images[:2], tmp)
        difference = float(np.abs(_run_export(format, tmp, images) - expected).max())
        if not difference <= TOLERANCE:
            raise AUFormerError(f"{path}: exported model differs from PyTorch by {difference:.2e} (> {TOLERANCE:.0e})")
    data_config = model.data_config
    resize_size = read_checkpoint_meta(checkpoint).get("extra", {}).get("resize_size") or default_resize_size(size)
    description = {
        "model": path.name,
        "format": format,
        "checkpoint": str(checkpoint_paths(checkpoint)[0]),
        "input": {"name": "images", "shape": ["batch", 3, size, size], "layout": "RGB, float32, normalised",
                  "mean": list(data_config["mean"]), "std": list(data_config["std"]),
                  "preprocessing": f"auformer.faces.align_faces crop (256 px), resize to {resize_size}, centre crop {size}"},
        "output": {"name": "probabilities", "shape": ["batch", len(model.aus)], "columns": au_columns(model.aus)},
        "max_abs_difference_vs_pytorch": difference,
    }
    path.with_name(path.name + ".json").write_text(json.dumps(description, indent=2) + "\n")
    return path


def run_export(args: argparse.Namespace) -> None:
    """``auformer export``: write the model file and its JSON, print where and how close it is."""
    path = export_model(args.checkpoint, args.out, args.format, backbone_weights=args.backbone_weights)
    description_path = path.with_name(path.name + ".json")
    difference = json.loads(description_path.read_text())["max_abs_difference_vs_pytorch"]
    print(f"wrote {path} (max |probability - PyTorch| = {difference:.1e})")
    print(f"wrote {description_path}")
