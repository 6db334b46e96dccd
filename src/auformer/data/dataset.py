"""Torch datasets over AU tables: images on disk (:class:`AUDataset`) or in memory (:class:`ArrayAUDataset`).

Both return ``(image, labels)``: the transformed image, a float tensor ``(3, H, W)``,
and the labels, float32 ``(N,)`` with 1 / 0 / -1 (unknown, masked by losses and metrics).
Given intensities (``(M, N)``, 0-5 or -1 unknown) they return ``(image, labels, intensity)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from auformer.data.images import read_rgb
from auformer.data.manifest import AUTable
from auformer.errors import AUFormerError


class AUDataset(torch.utils.data.Dataset):
    """Images of an :class:`AUTable`, read as RGB (:func:`read_rgb`) and passed through ``transform``."""

    def __init__(self, table: AUTable, transform: Callable, with_intensity: bool = False) -> None:
        """``with_intensity``: also return the table's intensities (all unknown when it has none)."""
        self.table = table
        self.transform = transform
        self.labels = torch.from_numpy(np.ascontiguousarray(table.labels, dtype=np.float32))  # (M, N)
        self.intensity = _intensity_tensor(table.intensity, self.labels) if with_intensity else None

    def __len__(self) -> int:
        return len(self.table)

    def load_image(self, index: int) -> np.ndarray:
        """The uint8 (H, W, 3) RGB image of sample ``index``; a missing or unreadable file is an error naming it."""
        return read_rgb(self.table.image_path(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = self.transform(self.load_image(index))
        return (image, self.labels[index]) if self.intensity is None else (image, self.labels[index], self.intensity[index])


class ArrayAUDataset(torch.utils.data.Dataset):
    """Images held in memory: uint8 ``(M, H, W, 3)`` plus labels ``(M, N)`` (the synthetic default)."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        transform: Callable,
        intensity: np.ndarray | None = None,
        with_intensity: bool | None = None,
    ) -> None:
        """``with_intensity``: also return ``intensity`` (all unknown when it is None), as :class:`AUDataset`;
        None (the default) means: when ``intensity`` is given."""
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise AUFormerError(f"images must be a uint8 (M, H, W, 3) array, got {images.dtype} {images.shape}")
        if len(labels) != len(images):
            raise AUFormerError(f"{len(images)} images but {len(labels)} label rows")
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.float32))  # (M, N)
        if with_intensity is None:
            with_intensity = intensity is not None
        self.intensity = _intensity_tensor(intensity, self.labels) if with_intensity else None
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        image = self.transform(self.images[index])
        return (image, self.labels[index]) if self.intensity is None else (image, self.labels[index], self.intensity[index])


def _intensity_tensor(intensity: np.ndarray | None, labels: torch.Tensor) -> torch.Tensor:
    """float32 ``(M, N)`` intensities; -1 everywhere (unknown) when the data has none."""
    if intensity is None:
        return torch.full_like(labels, -1.0)
    if intensity.shape != tuple(labels.shape):
        raise AUFormerError(f"intensity shape {intensity.shape} does not match labels shape {tuple(labels.shape)}")
    return torch.as_tensor(np.asarray(intensity, dtype=np.float32))
