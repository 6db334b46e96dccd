"""The one image gate: every image file auformer reads is decoded here, as uint8 RGB.

Training and evaluation datasets, ``detect``, ``prepare`` (every converter), ``serve``
and ``explain`` all call :func:`read_rgb`. It

- reads the size from the file's header and refuses, before decoding any pixel, an image
  of more than :func:`max_pixels` pixels (``AUFORMER_MAX_PIXELS``, default 80 million),
  with a side under ``MIN_SIDE`` pixels, or with its long side more than ``MAX_ASPECT``
  times its short side (such strips carry no face, and resizing them for the network or
  a face detector either empties them or makes them huge);
- decodes with Pillow, since it reports a truncated JPEG/PNG as an error (OpenCV fills
  the missing part with grey and only prints a warning); an animated GIF/PNG/WebP or a
  multi-page TIFF is read as its first frame;
- converts every storage to RGB: grey, palette, LA/RGBA (alpha dropped), CMYK, and
  16-bit images, which are scaled to 8 bits here (Pillow's ``convert("RGB")`` clips
  16-bit grey values above 255 to white);
- raises one error type, :class:`~auformer.errors.BadImageError`, for every refusal
  (Pillow's decompression-bomb warning and error included): ``--skip-bad`` counts and
  lists it, and the run goes on.

Video frames are decoded by OpenCV (``detect``, ``prepare``), but their size passes the
same :func:`check_size` before the first frame is decoded.
"""

from __future__ import annotations

import os
import struct
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from auformer.data.manifest import AUTable
from auformer.errors import AUFormerError, BadImageError

# File name suffixes read as photos and as videos (detect, serve, prepare folder).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".jp2", ".pgm", ".ppm"})
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"})

MAX_PIXELS_ENV = "AUFORMER_MAX_PIXELS"
# 80 MP: a 50-64 MP phone photo passes; the default stays under Pillow's own warning threshold (89.5 MP),
# so Pillow's global setting is left alone unless the user raises the limit.
DEFAULT_MAX_PIXELS = 80_000_000
MIN_SIDE = 8  # pixels: below this an image holds no face a detector or the network can use
MAX_ASPECT = 20  # long side / short side

# Pillow modes of one-channel images with more than 8 bits per pixel.
_WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# What Pillow raises on a malformed file: its plug-ins surface parser failures as any of these.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError, ZeroDivisionError)


def max_pixels() -> int:
    """The pixel limit: ``AUFORMER_MAX_PIXELS`` when set (a positive integer), else 80 million.

    A limit above Pillow's own decompression-bomb threshold also lifts that threshold
    (``PIL.Image.MAX_IMAGE_PIXELS``), so that the one limit a user sets is the one that holds.
    """
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(text))
    except ValueError:
        limit = 0
    if limit <= 0:
        raise AUFormerError(f"{MAX_PIXELS_ENV}={text!r}: expected a positive number of pixels, e.g. 120000000")
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    return limit


def check_size(source: object, width: int, height: int) -> None:
    """Refuse (:class:`BadImageError` naming ``source``) a size over the pixel limit, under ``MIN_SIDE`` or too elongated."""
    limit = max_pixels()
    reason = None
    if min(width, height) < MIN_SIDE:
        reason = f"{width}x{height} pixels: a side is under {MIN_SIDE} pixels"
    elif max(width, height) > MAX_ASPECT * min(width, height):
        reason = f"{width}x{height} pixels: one side is more than {MAX_ASPECT} times the other"
    elif width * height > limit:
        reason = f"{width}x{height} pixels is over the limit of {limit:,} pixels (raise it with {MAX_PIXELS_ENV})"
    if reason is not None:
        raise BadImageError(f"{source}: {reason}", reason)


def _refuse(path: Path, error: Exception) -> BadImageError:
    """The one-line refusal of a file Pillow could not open or decode."""
    text = " ".join(str(error).split())
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        reason = f"over the limit of {max_pixels():,} pixels (raise it with {MAX_PIXELS_ENV})"
    elif isinstance(error, UnidentifiedImageError):
        reason = "not an image (or a format Pillow cannot read)"
    elif "truncated" in text.lower():
        reason = "truncated image (the file ends inside the image data)"
    else:
        reason = "corrupt or unsupported image data"
    detail = f" ({type(error).__name__}: {text[:160]})" if reason.startswith("corrupt") else ""
    return BadImageError(f"{path}: {reason}{detail}", reason)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as uint8 ``(H, W, 3)`` RGB, EXIF orientation applied (the first frame of an animation).

    A missing file raises ``FileNotFoundError``; anything else that is not a usable image
    (empty, not an image, truncated, corrupt, over the pixel limit, degenerate size) a
    :class:`BadImageError` naming it, raised before the pixels are decoded where the
    header tells.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes)", "empty file (0 bytes)")
    max_pixels()  # lifts Pillow's own threshold first when the user raised the limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, *_DECODE_ERRORS) as error:
        raise _refuse(path, error) from None
    with image:
        check_size(path, *image.size)
        try:
            image.load()  # decode everything now: a truncated file fails here, not half-grey later
            image = ImageOps.exif_transpose(image)
            if image.mode in _WIDE_GREY:
                grey = np.asarray(image, dtype=np.int64)  # (H, W)
                grey = grey >> 8 if grey.max(initial=0) > 255 else grey
                return np.repeat(grey.clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)  # (H, W, 3)
            # np.array, not np.asarray: Pillow's buffer is read-only, and torchvision warns on every such array
            return np.array(image.convert("RGB"))  # (H, W, 3), writable
        except _DECODE_ERRORS as error:
            raise _refuse(path, error) from None


def drop_unreadable(table: AUTable) -> tuple[AUTable, list[str]]:
    """The rows of ``table`` whose image decodes, and one line (file and problem) per dropped row.

    What ``--skip-bad`` runs before training or evaluation: every image is decoded once,
    so a bad file (or a path that leads out of the dataset folder) is found up front and
    listed, not met mid-epoch.
    """
    keep, skipped = [], []
    for row in range(len(table)):
        try:
            read_rgb(table.image_path(row))
            keep.append(row)
        except (AUFormerError, FileNotFoundError) as error:
            skipped.append(str(error))
    return table.subset(keep), skipped


def open_video(path: str | os.PathLike) -> cv2.VideoCapture:
    """An opened OpenCV capture of the video at ``path`` whose frame size passes :func:`check_size`.

    A video that cannot be opened, or whose frames are degenerate or over the pixel
    limit, is a :class:`BadImageError` (before any frame is decoded); a missing file a
    ``FileNotFoundError``.
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"video not found: {path}")
    capture = cv2.VideoCapture(str(path))
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    try:
        if not capture.isOpened() or not capture.get(cv2.CAP_PROP_FPS) > 0:
            reason = "cannot open video (corrupt, unsupported codec, or no frame rate)"
            raise BadImageError(f"{path}: {reason}", reason)
        if width > 0 and height > 0:  # some containers tell the size only once a frame is decoded
            check_size(path, width, height)
    except BadImageError:
        capture.release()
        raise
    return capture
