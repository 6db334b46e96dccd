"""Reading one image file as uint8 RGB, whatever its storage: the one decoder of training and detection.

Pillow decodes, since it reports a truncated JPEG/PNG as an error (OpenCV fills the
missing part with grey and only prints a warning). Its own ``convert("RGB")`` is not
enough for 16-bit grey images: it clips every value above 255 to white, so those
are scaled to 8 bits here (the high byte, as OpenCV does).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from auformer.data.manifest import AUTable
from auformer.errors import AUFormerError

# File name suffixes read as photos and as videos (detect, serve, prepare folder).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})

# Pillow modes of one-channel images with more than 8 bits per pixel.
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as uint8 ``(H, W, 3)`` RGB, EXIF orientation applied.

    Grey, palette, RGBA (alpha dropped), CMYK and 16-bit images are converted; a missing
    file raises ``FileNotFoundError`` and one that cannot be decoded completely (truncated,
    corrupt, not an image) an :class:`AUFormerError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()  # decode everything now: a truncated file fails here, not half-grey later
            image = ImageOps.exif_transpose(image)
            if image.mode in _WIDE_GREY:
                grey = np.asarray(image, dtype=np.int64)  # (H, W)
                grey = grey >> 8 if grey.max(initial=0) > 255 else grey
                return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)  # (H, W, 3)
            return np.asarray(image.convert("RGB"))  # (H, W, 3)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise AUFormerError(f"{path}: cannot decode image ({error})") from None


def drop_unreadable(table: AUTable) -> tuple[AUTable, list[str]]:
    """The rows of ``table`` whose image decodes, and one line (file and problem) per dropped row.

    What ``--skip-bad`` runs before training or evaluation: every image is decoded once,
    so a bad file is found up front and listed, not met mid-epoch.
    """
    keep, skipped = [], []
    for row in range(len(table)):
        try:
            read_rgb(table.image_path(row))
            keep.append(row)
        except (AUFormerError, FileNotFoundError) as error:
            skipped.append(str(error))
    return table.subset(keep), skipped
