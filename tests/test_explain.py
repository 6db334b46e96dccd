"""`auformer explain`: Grad-CAM localisation on a hand-made model, t-SNE shape, and the command's outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from auformer.cli import main
from auformer.explain import grad_cam, tsne_points
from auformer.model import build_model
from auformer.model.checkpoint import save_checkpoint

TINY = dict(
    backbone="vit_tiny_patch16_224",
    backbone_weights="random",
    img_size=32,
    backbone_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
)


def test_grad_cam_maps_are_normalised_per_target():
    """One map per target AU, (K, H, W) in [0, 1] with its peak at 1; no target, no map."""
    torch.manual_seed(0)
    model = build_model(2, aux_head=True, **TINY).eval()
    with torch.no_grad():
        for param in model.learnable_parameters():
            param.add_(0.1 * torch.randn_like(param))
    maps = grad_cam(model, torch.randn(1, 3, 32, 32), [0, 1])
    assert maps.shape == (2, 32, 32) and maps.min() >= 0 and maps.max() == pytest.approx(1.0)
    assert grad_cam(model, torch.randn(1, 3, 32, 32), []).shape == (0, 32, 32)


def test_tsne_of_identical_tokens_fails_in_one_line():
    with pytest.raises(ValueError, match="the expert tokens are all equal"):
        tsne_points(np.zeros((5, 3, 4)))


def test_tsne_points_are_image_major():
    tokens = np.concatenate([np.full((10, 1, 4), 0.0), np.full((10, 1, 4), 50.0)], axis=1)  # (M=10, E=2, D=4)
    tokens = tokens + np.random.default_rng(0).normal(size=tokens.shape)
    points = tsne_points(tokens)
    assert points.shape == (20, 2)
    expert = np.arange(20) % 2
    centres = [points[expert == e].mean(0) for e in (0, 1)]
    spread = max(points[expert == e].std(0).max() for e in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread  # the two experts form two clusters


def test_explain_writes_gradcam_and_tsne(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_model(3, aus=[1, 2, 12], **TINY)
    with torch.no_grad():
        for param in model.learnable_parameters():
            param.add_(0.1 * torch.randn_like(param))  # untrained experts all output 0: nothing to embed
        model.head.bias.fill_(5.0)  # every AU predicted present, so each image gets three maps
    save_checkpoint(model, tmp_path / "ckpt")
    faces = tmp_path / "faces"
    faces.mkdir()
    for index in range(6):
        Image.fromarray(np.random.default_rng(index).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(faces / f"{index}.png")
    (faces / "broken.png").write_bytes(b"not an image")
    code = main(
        [
            "explain",
            str(tmp_path / "ckpt"),
            str(faces),
            "--out",
            str(tmp_path / "out"),
            "--gradcam-images",
            "2",
            "--compare-checkpoint",
            str(tmp_path / "ckpt"),
            "--titles",
            "with aux",
            "without aux",
        ]
    )
    assert code == 0
    captured = capsys.readouterr()
    assert sorted(p.name for p in (tmp_path / "out" / "gradcam").iterdir()) == ["0.png", "1.png"]
    assert (tmp_path / "out" / "tsne.png").is_file() and "(6 images x 3 experts)" in captured.out
    assert "skipped 1 unreadable images" in captured.err
