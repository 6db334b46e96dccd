"""Export a checkpoint to ONNX or TorchScript: one self-contained file, checked against PyTorch.

The exported graph holds the backbone, the experts and the main heads and maps
normalised images ``(B, 3, S, S)`` (S fixed, the model's input size; B free) to AU
probabilities ``(B, N)`` (output ``probabilities``) and, for checkpoints with intensity
heads, AU intensities 0-5 ``(B, N)`` (output ``intensity``). A JSON file beside it records
the outputs, the AU names and the preprocessing (aligned face crop, resize + centre crop,
mean/std) a caller must apply; an ONNX file also carries them, with the occurrence thresholds,
in its own metadata (`auformer.detect.runtime`), so ``detect --runtime onnxruntime`` needs
nothing beside it. ``quantize="int8"`` (ONNX only) stores the weights of the matrix
products as int8 (ONNX Runtime's dynamic quantisation): a smaller file and faster CPU inference,
checked against PyTorch within ``INT8_TOLERANCE``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from auformer.aus import INTENSITY_MAX, au_columns
from auformer.data.transforms import default_resize_size
from auformer.errors import AUFormerError
from auformer.files import atomic_path, atomic_write_text, earlier_outputs
from auformer.model.checkpoint import checkpoint_aus, checkpoint_paths, checkpoint_thresholds, open_checkpoint

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
TOLERANCE = 1e-4  # max |probability difference| between the export and PyTorch
INT8_TOLERANCE = 0.02  # the same for a dynamically quantised (int8) ONNX file
QUANTIZE = ("none", "int8")
DEFAULT_THRESHOLD = 0.5  # an AU's occurrence threshold when the checkpoint records none


class AUOutputs(nn.Module):
    """AUFormer reduced to what deployment needs: images -> the main heads' outputs, named in ``self.names``.

    ``probabilities`` = sigmoid of the occurrence head, ``intensity`` = the 0-5 intensity head;
    a tuple in that order of the ones the model has, or the tensor itself when there is one
    (so single-head TorchScript files give a tensor, as before intensity heads existed).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = ["probabilities"] * (model.head is not None) + ["intensity"] * (model.intensity is not None)

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        output = self.model(images)
        heads = {"probabilities": output.logits, "intensity": output.intensity}
        results = tuple(torch.sigmoid(heads[n]) if n == "probabilities" else heads[n] for n in self.names)  # each (B, N)
        return results if len(results) > 1 else results[0]


def _export_onnx(module: AUOutputs, example: torch.Tensor, path: Path) -> None:
    # The TorchScript-based exporter (dynamo=False): 10x faster than the dynamo exporter on
    # CPU (5 s against 50 s for a tiny ViT, measured); export_model checks its output anyway.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = {name: {0: "batch"} for name in ["images", *module.names]}
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["images"],
            output_names=module.names,
            dynamic_axes=axes,
            opset_version=18,
            dynamo=False,
        )


def _first_block_nodes(path: Path) -> list[str]:
    """The matrix products of the backbone's first transformer block: the nodes before its third
    LayerNormalization (the second block's norm1), in the graph's topological order."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    norms = [k for k, node in enumerate(nodes) if node.op_type == "LayerNormalization"]
    end = norms[2] if len(norms) > 2 else len(nodes)
    return [node.name for node in nodes[:end] if node.op_type in ("MatMul", "Gemm")]


def _quantize_int8(path: Path) -> None:
    """Replace the fp32 ONNX file ``path`` by its dynamically quantised version (int8 weights, per-batch
    activation scales): ONNX Runtime's own tool, as no hand-written pass would match its kernels."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name(path.name + ".fp32")
    path.replace(fp32)
    root = logging.getLogger()
    root.addFilter(_no_pre_processing_advice)
    try:
        # Weight matrices only (MatMul/Gemm with a constant B; attention's activation products and the
        # patch embedding's ConvInteger stay fp32). Per-channel scales with the 7-bit range gave the
        # closest probabilities of the settings tried; the first block stays fp32, as quantising it
        # alone moved a trained model's probabilities most (docs/performance.md, "int8").
        quantize_dynamic(
            fp32,
            path,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=_first_block_nodes(fp32),
            per_channel=True,
            reduce_range=True,
            extra_options={"MatMulConstBOnly": True},
        )
    finally:
        root.removeFilter(_no_pre_processing_advice)
        fp32.unlink()


def _no_pre_processing_advice(record: logging.LogRecord) -> bool:
    """Drop the quantiser's advice, logged to the root logger on every call, to run ONNX Runtime's
    pre-processing (``quant_pre_process``) first: on ViT-B it gave the same outputs at 0.95x / 1.04x
    the time at batch 1 / 4 (docs/performance.md), so we do not, and the line would reach every
    `auformer export --quantize int8` user."""
    return not record.getMessage().startswith("Please consider to run pre-processing")


def _write_metadata(path: Path, metadata: dict) -> None:
    """Store ``metadata`` (JSON) in the ONNX file's metadata_props under `runtime.METADATA_KEY`."""
    import onnx

    from auformer.detect.runtime import METADATA_KEY

    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(metadata)})
    onnx.save(graph, str(path))


def _export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():  # torch.jit's deprecation notices; the result is checked against PyTorch anyway
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(module, example, check_trace=False), str(path))


def _run_export(format: str, path: Path, images: torch.Tensor, names: list[str]) -> list[np.ndarray]:
    """The outputs ``names`` of the exported file, loaded fresh (ONNX Runtime for ONNX)."""
    if format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(names, {"images": images.numpy()})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        results = torch.jit.load(str(path)).eval()(images)
    return _arrays(results)


def _arrays(results: torch.Tensor | tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """One array per output of an `AUOutputs` (a tensor alone, or a tuple)."""
    return [t.detach().numpy() for t in ((results,) if isinstance(results, torch.Tensor) else results)]


def export_model(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "onnx",
    backbone_weights: str | None = None,
    quantize: str = "none",
) -> Path:
    """Write ``OUT_DIR/NAME.onnx`` (``NAME.int8.onnx`` quantised, ``NAME.pt``) and its description ``<file>.json``;
    returns the model path. Either file already there is refused (`AUFormerError`), never replaced.

    The model is exported with a batch of 2 and run on a batch of 3 random images,
    which must match PyTorch within ``TOLERANCE`` (``INT8_TOLERANCE`` quantised) (probabilities;
    intensities within 5 x that, their scale being 0-5) (this also checks the free batch size),
    else `AUFormerError` and no file is left behind.
    """
    if format not in FORMATS:
        raise AUFormerError(f"unknown export format {format!r}: valid formats are {', '.join(FORMATS)}")
    if quantize not in QUANTIZE or (quantize != "none" and format != "onnx"):
        raise AUFormerError(f"--quantize {quantize!r}: valid values are {', '.join(QUANTIZE)}; int8 needs --format onnx")
    opened = open_checkpoint(checkpoint, backbone_weights=backbone_weights)
    model, checkpoint = opened.model, opened.path  # a Hub repo id -> its cached files
    checkpoint_aus(model, checkpoint)  # the output columns are named by AU
    module = AUOutputs(model).eval()
    size = model.data_config["input_size"][-1]
    images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))  # (3, 3, S, S)
    with torch.no_grad():
        expected = _arrays(module(images))  # each (B, N)
    scales = [1.0 if name == "probabilities" else INTENSITY_MAX for name in module.names]
    out_dir = Path(out_dir)
    name = checkpoint_paths(checkpoint)[0].stem + ("" if quantize == "none" else f".{quantize}")
    path = out_dir / f"{name}{FORMATS[format]}"
    description_path = path.with_name(path.name + ".json")
    if earlier := earlier_outputs([path, description_path]):  # an earlier export, or another checkpoint's NAME.onnx.json
        raise AUFormerError(f"{earlier[0]} already exists: remove it or choose another --out (it is never replaced)")
    out_dir.mkdir(parents=True, exist_ok=True)
    data_config = model.data_config
    extra = opened.meta.get("extra", {})
    resize_size = extra.get("resize_size") or default_resize_size(size)
    tolerance = TOLERANCE if quantize == "none" else INT8_TOLERANCE
    with atomic_path(path) as tmp:  # a model that fails the check never replaces the file
        (_export_onnx if format == "onnx" else _export_torchscript)(module, images[:2], tmp)
        if quantize == "int8":
            _quantize_int8(tmp)
        if format == "onnx":  # what `auformer.detect.runtime` needs to run the file alone
            weights = backbone_weights or model.config.get("backbone_weights")
            _write_metadata(tmp, {
                "aus": list(model.aus), "thresholds": checkpoint_thresholds(opened.meta) or [DEFAULT_THRESHOLD] * len(model.aus),
                "outputs": module.names, "input_size": size, "mean": list(data_config["mean"]),
                "std": list(data_config["std"]), "resize_size": resize_size, "quantize": quantize,
                "dataset": "synthetic" if weights == "synthetic" else extra.get("dataset"),
            })  # fmt: skip
        exported = _run_export(format, tmp, images, module.names)
        difference = max(float(np.abs(a - b).max()) / scale for a, b, scale in zip(exported, expected, scales))
        if not difference <= tolerance:
            # int8 rounding moves a trained small model's outputs past the bound (docs/performance.md, "int8")
            advice = "; int8 rounds this model too far: export it without --quantize (fp32)" if quantize == "int8" else ""
            raise AUFormerError(f"{path}: exported model differs from PyTorch by {difference:.2e} (> {tolerance:.0e}){advice}")
    outputs = [
        {
            "name": name,
            "shape": ["batch", len(model.aus)],
            "range": [0, scale],
            "columns": [c + ("" if name == "probabilities" else "_r") for c in au_columns(model.aus)],
        }
        for name, scale in zip(module.names, scales)
    ]
    description = {
        "model": path.name,
        "format": format,
        "checkpoint": str(checkpoint_paths(checkpoint)[0]),
        "input": {
            "name": "images",
            "shape": ["batch", 3, size, size],
            "layout": "RGB, float32, normalised",
            "mean": list(data_config["mean"]),
            "std": list(data_config["std"]),
            "preprocessing": f"auformer.faces.align_faces crop (256 px), resize to {resize_size}, centre crop {size}",
        },
        "output": outputs[0],  # the first of "outputs" (kept for readers of single-output files)
        "outputs": outputs,
        "max_abs_difference_vs_pytorch": difference,  # over outputs, each divided by its range (1 or 5)
    }
    atomic_write_text(description_path, json.dumps(description, indent=2) + "\n")
    return path


def run_export(args: argparse.Namespace) -> None:
    """``auformer export``: write the model file and its JSON, print where and how close it is."""
    path = export_model(args.checkpoint, args.out, args.format, backbone_weights=args.backbone_weights, quantize=args.quantize)
    description_path = path.with_name(path.name + ".json")
    difference = json.loads(description_path.read_text())["max_abs_difference_vs_pytorch"]
    print(f"wrote {path} (max |output - PyTorch| / output range = {difference:.1e})")
    print(f"wrote {description_path}")
