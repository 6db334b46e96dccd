"""Test media and models that several test files share: written by the tests, nothing downloaded."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

import auformer


def tiny_checkpoint(path: Path, aus: list[int]) -> Path:
    """A tiny random AUFormer (2 blocks, width 32, 32 px) marked as trained on the synthetic dataset."""
    torch.manual_seed(0)
    model = auformer.build_model(
        len(aus),
        backbone="vit_tiny_patch16_224",
        backbone_weights="random",
        img_size=32,
        aus=aus,
        backbone_kwargs=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
    )
    torch.nn.init.normal_(model.head.weight, std=0.5)  # spread the probabilities away from 0.5
    auformer.save_checkpoint(model, path, extra={"dataset": "synthetic"})
    return path


def write_moving_face_video(path: Path, face_frames: int, blank_frames: int) -> Path:
    """10 fps MJPEG, 320x240: the astronaut's head moving right 25 px a frame for ``face_frames``
    frames, then ``blank_frames`` grey frames."""
    head = cv2.resize(data.astronaut()[30:230, 120:320], (150, 150))  # (150, 150, 3) RGB
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    for index in range(face_frames + blank_frames):
        frame = np.full((240, 320, 3), 200, dtype=np.uint8)
        if index < face_frames:
            frame[40:190, 10 + 25 * index : 160 + 25 * index] = head
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def two_faces_photo() -> np.ndarray:
    """(512, 912, 3) uint8 RGB: the astronaut, and beside her the first ``lfw_subset()`` face
    (25 px grey, upscaled to 260 px) on a light panel. dlib finds both."""
    lfw_face = (data.lfw_subset()[0] * 255).round().astype(np.uint8)  # (25, 25) grey
    panel = np.full((512, 400, 3), 235, dtype=np.uint8)
    panel[126:386, 70:330] = cv2.resize(lfw_face, (260, 260), interpolation=cv2.INTER_CUBIC)[..., None]
    return np.concatenate([data.astronaut(), panel], axis=1)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` RGB pixels, with a few bytes of image data: a
    decompression bomb's shape (a reader that trusts the header allocates width * height * 3 bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b"")
