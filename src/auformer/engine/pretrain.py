"""Pre-training of the small synthetic-face ViT that the ``synthetic`` preset freezes.

AUFormer adapts a *pre-trained* frozen ViT; a randomly initialised frozen ViT is no
base for adapters (SPEC 3c). Real face models are pre-trained on geometry, so this
one learns face geometry from the generator: every patch token predicts a heatmap
of the 32 landmarks (brows, eyes, nose, mouth, cheeks, chin, jaw) and the CLS token
regresses the landmarks plus the identity, pose and lighting parameters
(``LATENT_NAMES``). It never sees AU labels or intensities; AU-related geometry (a
raised brow, a lifted lip corner) is in the landmarks the way it is in real
landmark data. The faces come from another seed and other identities than the
default training set, so the default run does not evaluate on faces the backbone
has seen.

``validate_backbone`` then checks the result the way the adapters will use it:
a linear probe on frozen features, subject-exclusive folds, against a random init.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from auformer.aus import au_columns
from auformer.data.synthetic import SyntheticData, generate_synthetic, synthetic_folds
from auformer.data.synthetic_appearance import LANDMARK_NAMES, SYNTHETIC_AUS
from auformer.data.synthetic_drawing import FACE_UNIT, LATENT_NAMES
from auformer.files import atomic_path, atomic_write_text
from auformer.metrics import au_metrics

ASSET_NAME = "synthetic_vit"  # the package ships assets/synthetic_vit.safetensors + .json


@dataclass
class PretrainConfig:
    """Everything that determines the pre-trained weights (saved in the JSON next to them)."""

    backbone: str = "vit_tiny_patch16_224"  # timm architecture name
    img_size: int = 64  # input size in pixels, the synthetic preset's
    backbone_kwargs: dict[str, int] = field(
        default_factory=lambda: {"patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3}
    )  # timm.create_model keyword arguments that shape the ViT
    num_images: int = 16000  # pre-training faces
    num_subjects: int = 600  # identities among them
    data_seed: int = 1000  # generator seed: other faces and identities than the default training set (seed 0)
    epochs: int = 16  # passes over the pre-training faces
    batch_size: int = 64  # faces per step
    lr: float = 2e-3  # AdamW peak learning rate
    weight_decay: float = 0.05  # AdamW weight decay
    heatmap_weight: float = 20.0  # weight of the dense per-patch landmark heatmap loss
    heatmap_sigma: float = 0.75  # heatmap Gaussian width, in patches
    warmup_fraction: float = 0.05  # linear warm-up over this fraction of the steps, then cosine decay to 0
    seed: int = 0  # weight init and batch order
    max_steps: int | None = None  # stop after this many steps (quick checks and tests)


def create_vit(config: PretrainConfig) -> torch.nn.Module:
    """The headless timm ViT being pre-trained; its state_dict keys are the asset's keys."""
    return timm.create_model(config.backbone, num_classes=0, img_size=config.img_size, **config.backbone_kwargs)


def normalise(images: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """uint8 (M, S, S, 3) -> float (M, 3, S, S) normalised with the model's pretrained-config mean/std.

    The same statistics the training transforms read from ``model.pretrained_cfg``.
    """
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # (M, 3, S, S)
    return (pixels - mean) / std


def face_frame_landmarks(data: SyntheticData) -> np.ndarray:
    """Landmarks (M, K, 2) in face units: the image landmarks with rotation, scale and shift undone.

    Their variance is identity and expression rather than pose, so regressing them
    makes the backbone resolve the small displacements (a few pixels) that expressions cause.
    """
    latent = {name: data.latents[:, i, None] for i, name in enumerate(LATENT_NAMES)}  # each (M, 1)
    unit = FACE_UNIT * latent["scale"]
    u = (data.landmarks[..., 0] - 0.5 - latent["shift_x"]) / unit  # (M, K) rotated face-unit coordinates
    v = (data.landmarks[..., 1] - 0.5 - latent["shift_y"]) / unit
    cos, sin = np.cos(latent["rotation"]), np.sin(latent["rotation"])
    return np.stack([cos * u + sin * v, -sin * u + cos * v], -1)  # (M, K, 2)


def geometry_targets(data: SyntheticData) -> np.ndarray:
    """Regression targets (M, 4K + L): image landmarks, face-frame landmarks, latent parameters."""
    flat = [data.landmarks.reshape(len(data.landmarks), -1), face_frame_landmarks(data).reshape(len(data.landmarks), -1)]
    return np.concatenate([*flat, data.latents], 1).astype(np.float32)  # (M, 4K + L)


def landmark_heatmaps(landmarks: torch.Tensor, grid: tuple[int, int], sigma: float) -> torch.Tensor:
    """Dense targets (B, T, K): a Gaussian of each patch centre's distance to each landmark.

    landmarks (B, K, 2) in [0, 1] image coords; T = grid rows x cols, row-major like
    the ViT's patch tokens; sigma in patches. Supervising every patch token makes the
    tokens the adapters read learn where brows, lids and lip corners are (the global
    CLS regression alone barely moves in a CPU budget).
    """
    rows, cols = grid
    ys, xs = torch.meshgrid((torch.arange(rows) + 0.5) / rows, (torch.arange(cols) + 0.5) / cols, indexing="ij")
    centres = torch.stack([xs, ys], -1).reshape(1, rows * cols, 1, 2)  # (1, T, 1, 2)
    patches = torch.tensor([cols, rows], dtype=landmarks.dtype)  # image coords -> patch units
    squared = (((centres - landmarks[:, None]) * patches) ** 2).sum(-1)  # (B, T, K)
    return torch.exp(-squared / (2 * sigma**2))


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up then cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def pretrain_backbone(config: PretrainConfig, progress: bool = True) -> tuple[torch.nn.Module, list[float]]:
    """Pre-train the ViT on synthetic-face geometry; returns it (eval mode) and the mean loss per epoch.

    Deterministic for a given config and torch thread count (CPU).
    """
    torch.manual_seed(config.seed)
    data = generate_synthetic(config.num_images, config.img_size, config.data_seed, config.num_subjects, progress=progress)
    model = create_vit(config)
    images = normalise(data.images, model)  # (M, 3, S, S)
    targets = torch.from_numpy(geometry_targets(data))  # (M, 4K + L)
    targets = (targets - targets.mean(0)) / targets.std(0).clamp_min(1e-6)  # every target equally weighted
    landmarks = torch.from_numpy(data.landmarks)  # (M, K, 2)
    head = torch.nn.Linear(model.num_features, targets.shape[1])  # CLS token -> global targets
    dense_head = torch.nn.Linear(model.num_features, landmarks.shape[1])  # patch token -> K heatmap values
    params = [*model.parameters(), *head.parameters(), *dense_head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(images) / config.batch_size)
    total = (
        steps_per_epoch * config.epochs if config.max_steps is None else min(config.max_steps, steps_per_epoch * config.epochs)
    )
    order_rng = torch.Generator().manual_seed(config.seed)
    history: list[float] = []
    step = 0
    model.train()
    bar = tqdm(total=total, desc="pre-training", unit="step", disable=not progress)
    while step < total:
        order = torch.randperm(len(images), generator=order_rng)
        losses = []
        for batch in order.split(config.batch_size):
            if step == total:
                break
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, total, max(1, round(config.warmup_fraction * total)))
            tokens = model.forward_features(images[batch])  # (B, 1 + T, D), final norm applied
            heatmaps = landmark_heatmaps(landmarks[batch], model.patch_embed.grid_size, config.heatmap_sigma)  # (B, T, K)
            loss = F.mse_loss(head(tokens[:, 0]), targets[batch]) + config.heatmap_weight * F.mse_loss(
                dense_head(tokens[:, model.num_prefix_tokens :]), heatmaps
            )
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            losses.append(loss.item())
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.4f}")
        history.append(float(np.mean(losses)))
    bar.close()
    return model.eval(), history


@torch.no_grad()
def backbone_features(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Frozen features (M, 17 D): the final-norm CLS token and the patch tokens average-pooled to 4 x 4.

    The pooled grid keeps *where* things are, which AUs need and the adapters see.
    """
    model.eval()
    rows, cols = model.patch_embed.grid_size
    features = []
    for start in range(0, len(images), batch_size):
        tokens = model.forward_features(normalise(images[start : start + batch_size], model))  # (B, 1 + T, D)
        grid = tokens[:, model.num_prefix_tokens :].transpose(1, 2).reshape(len(tokens), -1, rows, cols)  # (B, D, rows, cols)
        pooled = F.adaptive_avg_pool2d(grid, 4).flatten(1)  # (B, 16 D)
        features.append(torch.cat([tokens[:, 0], pooled], 1))  # (B, 17 D)
    return torch.cat(features).numpy()


def _fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, l2: float = 1e-3) -> np.ndarray:
    """L2-regularised logistic regression of all AUs at once; returns test probabilities (M, N).

    One full-batch LBFGS fit in torch instead of N scikit-learn fits: same model,
    an order of magnitude faster on the shared CPU.
    """
    x, y = torch.from_numpy(train_x).float(), torch.from_numpy(train_y).float()
    linear = torch.nn.Linear(x.shape[1], y.shape[1])
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=300, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(linear(x), y) + l2 * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return torch.sigmoid(linear(torch.from_numpy(test_x).float())).numpy()


def linear_probe(features: np.ndarray, data: SyntheticData, num_folds: int = 3) -> dict:
    """Logistic regression on frozen features, subject-exclusive folds, F1 against the clean labels.

    Returns ``{"mean_f1": float, "per_fold": [float, ...], "per_au": {"AU01": f1, ...}}``
    (fold means of the project's F1 at threshold 0.5).
    """
    subjects = np.array(data.subjects)
    fold_scores = []
    for test_subjects in synthetic_folds(data.subjects, num_folds):
        test = np.isin(subjects, test_subjects)
        scaler = StandardScaler().fit(features[~test])
        probs = _fit_probe(scaler.transform(features[~test]), data.labels[~test], scaler.transform(features[test]))
        fold_scores.append(au_metrics(probs, data.clean_labels[test], aus=SYNTHETIC_AUS))
    per_au = {key: float(np.mean([fold["per_au"][key]["f1"] for fold in fold_scores])) for key in au_columns(SYNTHETIC_AUS)}
    return {
        "mean_f1": float(np.mean([fold["mean_f1"] for fold in fold_scores])),
        "per_fold": [float(fold["mean_f1"]) for fold in fold_scores],
        "per_au": per_au,
    }


def validate_backbone(model: torch.nn.Module, config: PretrainConfig, num_images: int = 3000, seed: int = 0) -> dict:
    """Linear-probe AU F1 of the pre-trained ViT and of a random init of the same shape.

    Uses the default training set (``generate_synthetic(num_images, seed=seed)``), which
    the pre-training never saw. Returns ``{"pretrained": probe, "random_init": probe}``.
    """
    data = generate_synthetic(num_images, config.img_size, seed)
    torch.manual_seed(config.seed)
    return {
        name: linear_probe(backbone_features(vit, data.images), data)
        for name, vit in (("pretrained", model), ("random_init", create_vit(config)))
    }


def save_backbone(model: torch.nn.Module, config: PretrainConfig, out_dir: str | Path, report: dict) -> Path:
    """Write ``synthetic_vit.safetensors`` (timm keys, headless) and its description ``synthetic_vit.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{ASSET_NAME}.safetensors"
    with atomic_path(weights) as temp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temp), metadata={"format": "pt"})
    description = {
        "what": "headless timm ViT pre-trained on auformer synthetic faces: per-patch landmark heatmaps plus "
        "CLS regression of landmarks and identity/pose/lighting parameters; no AU labels or intensities used",
        "timm_name": config.backbone,
        "img_size": config.img_size,
        "backbone_kwargs": config.backbone_kwargs,
        "mean": list(model.pretrained_cfg["mean"]),
        "std": list(model.pretrained_cfg["std"]),
        "targets": {"landmarks": LANDMARK_NAMES, "latents": LATENT_NAMES},
        "command": f"auformer pretrain-synthetic --out DIR --seed {config.seed} --epochs {config.epochs} "
        f"--num-images {config.num_images}",
        "config": asdict(config),
        "torch": torch.__version__,
        "timm": timm.__version__,
        **report,
    }
    atomic_write_text(out / f"{ASSET_NAME}.json", json.dumps(description, indent=2) + "\n")
    return weights


def run_pretrain(config: PretrainConfig, out_dir: str | Path, validate: bool = True) -> Path:
    """Pre-train, optionally probe, save; returns the safetensors path. The CLI's ``pretrain-synthetic``."""
    start = time.perf_counter()
    model, history = pretrain_backbone(config)
    report: dict = {
        "loss_per_epoch": history,
        "pretrain_seconds": round(time.perf_counter() - start, 1),
        "torch_threads": torch.get_num_threads(),
    }
    if validate:
        report["linear_probe"] = validate_backbone(model, config)
    return save_backbone(model, config, out_dir, report)
