"""Pre-training of the synthetic-face ViT: determinism, saved file format, targets, probe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from auformer.data.synthetic import SyntheticData, generate_synthetic
from auformer.data.synthetic_drawing import LATENT_NAMES, render_faces
from auformer.engine.pretrain import (
    PretrainConfig,
    face_frame_landmarks,
    landmark_heatmaps,
    linear_probe,
    pretrain_backbone,
    save_backbone,
)
from auformer.model.backbone import SYNTHETIC_WEIGHTS, create_backbone

TINY = PretrainConfig(
    img_size=32,
    backbone_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
    num_images=48,
    num_subjects=4,
    batch_size=16,
    max_steps=2,
)


def test_pretrain_is_deterministic_and_saves_timm_keys(tmp_path):
    model, history = pretrain_backbone(TINY, progress=False)
    _, again = pretrain_backbone(TINY, progress=False)
    assert history == again and len(history) == 1 and np.isfinite(history[0])
    weights = save_backbone(model, TINY, tmp_path, {"loss_per_epoch": history})
    fresh = timm.create_model(TINY.backbone, num_classes=0, img_size=TINY.img_size, **TINY.backbone_kwargs)
    fresh.load_state_dict(load_file(weights), strict=True)  # exactly the headless timm keys
    description = json.loads(weights.with_suffix(".json").read_text())
    assert description["timm_name"] == TINY.backbone and description["backbone_kwargs"] == TINY.backbone_kwargs
    loaded = create_backbone(TINY.backbone, weights=str(weights), img_size=TINY.img_size, kwargs=TINY.backbone_kwargs)
    image = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded(image), model(image))


def test_heatmap_peaks_at_the_landmark_patch():
    landmarks = torch.tensor([[[0.5625, 0.0625], [0.1, 0.9]]])  # centre of patch (row 0, col 4); inside (row 7, col 0)
    heat = landmark_heatmaps(landmarks, (8, 8), sigma=0.75).reshape(8, 8, 2)  # (rows, cols, K)
    assert heat[0, 4, 0] == pytest.approx(1.0)
    assert heat[0, 3, 0] == pytest.approx(np.exp(-1 / (2 * 0.75**2)), rel=1e-5)  # one patch away
    assert divmod(int(heat[..., 1].argmax()), 8) == (7, 0)


def test_face_frame_landmarks_undo_the_pose():
    data = generate_synthetic(num_images=2, size=48, seed=0, num_subjects=1)
    latents = np.repeat(data.latents[:1], 2, 0)
    latents[:, LATENT_NAMES.index("yaw")] = 0.0
    latents[1, LATENT_NAMES.index("rotation")] = 0.15
    latents[1, LATENT_NAMES.index("scale")] = 0.93
    latents[1, LATENT_NAMES.index("shift_x")] = 0.04
    images, landmarks = render_faces(latents, np.zeros((2, 12), np.float32), 48)
    posed = SyntheticData(images, np.zeros((2, 12)), ["S0", "S0"], np.zeros((2, 12)), landmarks, latents, np.zeros((2, 12)))
    frame = face_frame_landmarks(posed)
    assert not np.allclose(landmarks[0], landmarks[1], atol=1e-2)
    assert np.allclose(frame[0], frame[1], atol=1e-4)


def test_linear_probe_separates_informative_from_random_features():
    data = generate_synthetic(num_images=90, size=32, seed=1, num_subjects=6)
    rng = np.random.default_rng(0)
    informative = data.clean_labels * 2 + rng.normal(0, 0.3, data.clean_labels.shape)
    good = linear_probe(informative, data)
    bad = linear_probe(rng.normal(size=(90, 12)), data)
    assert good["mean_f1"] > 0.95 and bad["mean_f1"] < 0.6
    assert set(good["per_au"]) == {"AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU14", "AU15", "AU17", "AU25", "AU26"}


@pytest.mark.skipif(not SYNTHETIC_WEIGHTS.is_file(), reason="the synthetic backbone asset is not built yet")
def test_shipped_asset_loads_as_described():
    description = json.loads(SYNTHETIC_WEIGHTS.with_suffix(".json").read_text())
    model = create_backbone(
        description["timm_name"], weights="synthetic", img_size=description["img_size"], kwargs=description["backbone_kwargs"]
    )
    assert model(torch.zeros(1, 3, description["img_size"], description["img_size"])).shape == (1, model.num_features)
    assert SYNTHETIC_WEIGHTS.stat().st_size < 8 * 2**20
