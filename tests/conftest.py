"""Shared test fixtures: the tiny timm ViT every model test builds on (no downloads)."""

from __future__ import annotations

import os

import pytest

# pytest-xdist (`-n auto` in pyproject.toml) runs one worker per core. Each worker, and every process a test
# starts (they inherit the variable), then computes on one thread: with the default of one thread per core
# in every worker, OpenMP threads outnumber the cores and spin at barriers waiting for descheduled peers
# (a YuNet test took 85 s instead of 3 on the 2-core machine under load). Read before torch is imported.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = "1"

TINY_BACKBONE = "vit_tiny_patch16_224"
TINY_IMG_SIZE = 32  # 4x4 patch grid with patch_size 8


@pytest.fixture
def tiny_backbone_kwargs() -> dict:
    """timm kwargs that shrink a ViT to 2 blocks of width 32 (a fraction of a second per forward)."""
    return dict(patch_size=8, embed_dim=32, depth=2, num_heads=2)


@pytest.fixture
def tiny_model_kwargs(tiny_backbone_kwargs: dict) -> dict:
    """Keyword arguments for ``build_model(num_aus, **tiny_model_kwargs)``: a random-init tiny AUFormer."""
    return dict(backbone=TINY_BACKBONE, backbone_weights="random", img_size=TINY_IMG_SIZE, backbone_kwargs=tiny_backbone_kwargs)
