"""Parameter and FLOP counts (``auformer info``).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts matmuls,
convolutions and attention at 2 FLOPs per multiply-accumulate (MAC); elementwise
ops (activations, softmax, LayerNorm, the CA products) are not counted. Papers
usually quote MACs as "FLOPs": ViT-B/16's 17.6 G in the AUFormer paper are MACs,
so we print both ``gflops`` and ``gmacs = gflops / 2``.

The model is built on PyTorch's ``meta`` device: shapes only, no memory, no
weights, so counting ViT-L takes a second and needs no download.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from auformer.errors import AUFormerError
from auformer.model.auformer import build_model


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"learnable": ..., "total": ...}`` parameter counts."""
    return {
        "learnable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total": sum(p.numel() for p in model.parameters()),
    }


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> int:
    """FLOPs (2 per MAC) of one ``module(*inputs)`` call in inference mode."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


def model_info(num_aus: int, backbone: str = "vit_base_patch16_224", img_size: int = 224, moke: str = "fused",
               backbone_kwargs: dict | None = None) -> dict:
    """Parameter and FLOP counts of AUFormer and of its plain ViT at batch 1 (random init, meta device)."""
    with torch.device("meta"):
        model = build_model(num_aus, backbone, img_size=img_size, moke=moke, backbone_kwargs=backbone_kwargs).eval()
        images = torch.empty(1, 3, img_size, img_size)
    params = count_parameters(model)
    flops = count_flops(model, images)
    backbone_flops = count_flops(model.backbone, images)
    expert_params = sum(p.numel() for p in model.mlp_groups[0].experts[0].parameters())
    return {
        "backbone": backbone,
        "num_aus": num_aus,
        "img_size": img_size,
        "moke": moke,
        "learnable_params": params["learnable"],
        "total_params": params["total"],
        "backbone_params": params["total"] - params["learnable"],
        "params_per_expert": expert_params,
        "gflops": flops / 1e9,
        "backbone_gflops": backbone_flops / 1e9,
        "gmacs": flops / 2e9,
        "backbone_gmacs": backbone_flops / 2e9,
        "flops_increase_pct": 100.0 * (flops / backbone_flops - 1.0),
        "flop_convention": "FLOPs = 2 x MACs (torch.utils.flop_counter, matmul/conv/attention only); "
                           "the paper's 17.6 G for ViT-B/16 are MACs",
    }


def run_info(args: argparse.Namespace) -> None:
    """``auformer info``: print the counts as a table or JSON; with ``--out`` also write ``info.json``."""
    backbone_kwargs = args.backbone_kwargs
    if isinstance(backbone_kwargs, str):
        try:
            backbone_kwargs = json.loads(backbone_kwargs)
        except json.JSONDecodeError as error:
            raise AUFormerError(f"--backbone-kwargs is not valid JSON: {error}") from None
        if not isinstance(backbone_kwargs, dict):
            raise AUFormerError("--backbone-kwargs must be a JSON object, e.g. '{\"depth\": 6}'")
    info = model_info(args.num_aus, args.backbone, args.img_size, args.moke, backbone_kwargs)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(len(key) for key in info)
        for key, value in info.items():
            shown = f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:<{width}}  {shown}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {out / 'info.json'}", file=sys.stderr)
