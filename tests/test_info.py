"""`auformer info` and the parameter/FLOP counters."""

from __future__ import annotations

import json

import pytest
import torch

from auformer.cli import main
from auformer.model import build_model
from auformer.model.profile import count_flops, count_parameters

TINY_KWARGS_JSON = '{"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}'


def _tiny_vit_macs(tokens: int = 17, dim: int = 32, depth: int = 2, patches: int = 16, patch_pixels: int = 3 * 8 * 8) -> int:
    """Multiply-accumulates of the tiny ViT by hand: patch embedding, then per block qkv, q.k, a.v, proj, MLP."""
    per_block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * 4 * dim
    return patches * patch_pixels * dim + depth * per_block


def test_count_flops_is_two_per_mac():
    layer = torch.nn.Linear(10, 20)
    assert count_flops(layer, torch.randn(3, 10)) == 2 * 3 * 10 * 20


def test_info_json_for_a_tiny_backbone(capsys, tmp_path):
    code = main(
        [
            "info",
            "--backbone",
            "vit_tiny_patch16_224",
            "--num-aus",
            "3",
            "--img-size",
            "32",
            "--backbone-kwargs",
            TINY_KWARGS_JSON,
            "--json",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    info = json.loads(capsys.readouterr().out)
    assert info == json.loads((tmp_path / "info.json").read_text())
    assert info["backbone_gflops"] * 1e9 == pytest.approx(2 * _tiny_vit_macs())
    assert info["gmacs"] == pytest.approx(info["gflops"] / 2)
    assert info["gflops"] > info["backbone_gflops"]
    model = build_model(3, "vit_tiny_patch16_224", "random", img_size=32, backbone_kwargs=json.loads(TINY_KWARGS_JSON))
    assert {"learnable": info["learnable_params"], "total": info["total_params"]} == count_parameters(model)


def test_info_table_and_bad_kwargs(capsys):
    assert main(["info", "--backbone", "vit_tiny_patch16_224", "--img-size", "32", "--backbone-kwargs", TINY_KWARGS_JSON]) == 0
    assert "learnable_params" in capsys.readouterr().out
    assert main(["info", "--backbone-kwargs", "{depth: 2}"]) == 2
    assert "error: --backbone-kwargs is not valid JSON" in capsys.readouterr().err


def test_info_method_counts_that_method(capsys):
    assert (
        main(
            [
                "info",
                "--backbone",
                "vit_tiny_patch16_224",
                "--num-aus",
                "3",
                "--img-size",
                "32",
                "--backbone-kwargs",
                TINY_KWARGS_JSON,
                "--method",
                "lora",
                "--json",
            ]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    model = build_model(
        3, "vit_tiny_patch16_224", "random", img_size=32, backbone_kwargs=json.loads(TINY_KWARGS_JSON), method="lora"
    )
    assert info["method"] == "lora" and info["learnable_params"] == count_parameters(model)["learnable"]
    assert info["backbone_params"] + info["learnable_params"] == info["total_params"]


def test_info_compare_writes_the_fig1_table_and_bubble_plot(capsys, tmp_path):
    assert (
        main(
            [
                "info",
                "--compare",
                "--backbone",
                "vit_tiny_patch16_224",
                "--num-aus",
                "3",
                "--img-size",
                "32",
                "--backbone-kwargs",
                TINY_KWARGS_JSON,
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("| method | learnable params | total params | GFLOPs | GMACs | paper F1 (BP4D, %) |")
    rows = {row["method"]: row for row in json.loads((tmp_path / "compare.json").read_text())}
    assert list(rows) == ["auformer", "full-finetune", "linear", "adapter", "adaptformer", "lora", "vpt", "convpass"]
    # Fig. 1's Convpass at its published width d=8: down D->8, 3x3 conv 8->8, up 8->D, beside MHSA and MLP (2 blocks)
    assert rows["convpass"]["learnable_params"] == 32 * 3 + 3 + 2 * 2 * (32 * 8 + 8 + 8 * 8 * 9 + 8 + 8 * 32 + 32)
    assert rows["adaptformer"]["paper_f1"] is None
    assert rows["full-finetune"]["learnable_params"] == rows["full-finetune"]["total_params"]
    assert rows["linear"]["learnable_params"] == 32 * 3 + 3  # the head alone
    assert rows["vpt"]["gflops"] > rows["linear"]["gflops"]  # prompts lengthen every block's sequence
    assert rows["auformer"]["paper_f1"] == 66.2 and rows["linear"]["paper_f1"] is None
    assert (tmp_path / "compare.png").stat().st_size > 10_000
