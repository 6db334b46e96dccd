"""Train/test image transforms of the AU literature (ME-GraphAU, AUFormer).

Train: resize the shorter side to ``resize_size``, random crop ``img_size``, horizontal
flip, colour jitter. Test: resize + centre crop. Both normalise with the backbone's
pretrained mean/std (``model.data_config["mean"]``), which differ between timm tags
(0.5 for ``augreg`` ViTs, ImageNet statistics for DeiT).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchvision.transforms import v2

from auformer.errors import AUFormerError


def default_resize_size(img_size: int) -> int:
    """The literature's 256 -> 224 ratio, scaled to other input sizes (32 -> 37)."""
    return round(img_size * 256 / 224)


def build_transform(
    train: bool,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize_size: int | None = None,
    color_jitter: float = 0.4,
    hflip: bool = True,
) -> Callable:
    """Transform from a PIL image or a uint8 ``(H, W, 3)`` array to a float ``(3, img_size, img_size)`` tensor.

    ``color_jitter`` is the brightness/contrast/saturation strength (0 disables it);
    augmentation only applies when ``train`` is true.
    """
    resize_size = resize_size or default_resize_size(img_size)
    if resize_size < img_size:
        raise AUFormerError(f"resize_size ({resize_size}) must be at least img_size ({img_size})")
    steps: list[Callable] = [v2.ToImage(), v2.Resize(resize_size, antialias=True)]  # (3, H, W) uint8
    if train:
        steps.append(v2.RandomCrop(img_size))
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if color_jitter > 0:
            steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    else:
        steps.append(v2.CenterCrop(img_size))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)
