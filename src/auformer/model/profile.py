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


def model_info(
    num_aus: int,
    backbone: str = "vit_base_patch16_224",
    img_size: int = 224,
    moke: str = "fused",
    backbone_kwargs: dict | None = None,
    method: str = "auformer",
    **options,
) -> dict:
    """Parameter and FLOP counts of a ``method`` and of its plain ViT at batch 1 (random init, meta device).

    ``options``: other `build_model` arguments (e.g. ``d``, ``lora_targets``); their defaults otherwise.
    """
    with torch.device("meta"):
        model = build_model(
            num_aus, backbone, "random", img_size, moke, backbone_kwargs=backbone_kwargs, method=method, **options
        ).eval()
        images = torch.empty(1, 3, img_size, img_size)
    params = count_parameters(model)
    flops = count_flops(model, images)
    backbone_flops = count_flops(model.backbone, images)
    experts = getattr(model.mlp_groups[0], "experts", None)
    expert_params = sum(p.numel() for p in experts[0].parameters()) if experts else 0
    return {
        "method": method,
        "backbone": backbone,
        "num_aus": num_aus,
        "img_size": img_size,
        "moke": moke,
        "learnable_params": params["learnable"],
        "total_params": params["total"],
        "backbone_params": sum(p.numel() for p in model.backbone.parameters()),
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
    if args.compare:
        run_compare(args, backbone_kwargs)
        return
    info = model_info(args.num_aus, args.backbone, args.img_size, args.moke, backbone_kwargs, args.method)
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


# Mean F1 (%) on BP4D that the paper reports per method (Tables 4 and 5a; no linear probe there).
PAPER_F1 = {"auformer": 66.2, "full-finetune": 61.9, "adapter": 63.1, "lora": 63.0, "vpt": 62.6, "convpass": 63.6}


def compare_rows(num_aus: int, backbone: str, img_size: int, moke: str, backbone_kwargs: dict | None) -> list[dict]:
    """The Fig. 1 table: one `model_info` per method, at the settings of Table 5a (`petl.COMPARISON_SETTINGS`:
    Convpass at its published width, LoRA on q and k), else the config defaults."""
    from auformer.model.petl import COMPARISON_SETTINGS, METHODS

    rows = []
    for method in METHODS:
        info = model_info(num_aus, backbone, img_size, moke, backbone_kwargs, method, **COMPARISON_SETTINGS.get(method, {}))
        rows.append(
            {
                "method": method,
                "learnable_params": info["learnable_params"],
                "total_params": info["total_params"],
                "gflops": info["gflops"],
                "gmacs": info["gmacs"],
                "paper_f1": PAPER_F1.get(method),
            }
        )
    return rows


def compare_markdown(rows: list[dict]) -> str:
    lines = [
        "| method | learnable params | total params | GFLOPs | GMACs | paper F1 (BP4D, %) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        paper = "-" if row["paper_f1"] is None else f"{row['paper_f1']:.1f}"
        lines.append(
            f"| {row['method']} | {row['learnable_params'] / 1e6:.3f} M | {row['total_params'] / 1e6:.2f} M "
            f"| {row['gflops']:.2f} | {row['gmacs']:.2f} | {paper} |"
        )
    return "\n".join(lines)


def run_compare(args: argparse.Namespace, backbone_kwargs: dict | None) -> None:
    """``auformer info --compare``: the table on stdout (or JSON), and OUT/compare.md, .json and the bubble plot."""
    from auformer.files import atomic_write_text
    from auformer.viz import plot_cost_bubbles

    rows = compare_rows(args.num_aus, args.backbone, args.img_size, args.moke, backbone_kwargs)
    table = compare_markdown(rows)
    print(json.dumps(rows, indent=2) if args.json else table)
    out = Path(args.out or "info-compare")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.md", table + "\n")
    atomic_write_text(out / "compare.json", json.dumps(rows, indent=2) + "\n")
    plot = plot_cost_bubbles(rows, out / "compare.png", title=f"{args.backbone}, {args.num_aus} AUs, {args.img_size} px")
    print(f"wrote {out / 'compare.md'}, {out / 'compare.json'} and {plot}", file=sys.stderr)
