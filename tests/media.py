"""Test media and models that several test files share: written by the tests, nothing downloaded."""

from __future__ import annotations

import functools
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

import auformer
from face_photos import grace_hopper


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


def write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    """An MJPEG video of uint8 (H, W, 3) RGB ``frames``."""
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_moving_face_video(path: Path, face_frames: int, blank_frames: int) -> Path:
    """10 fps MJPEG, 320x240: the astronaut's head moving right 25 px a frame for ``face_frames``
    frames, then ``blank_frames`` grey frames."""
    head = cv2.resize(data.astronaut()[30:230, 120:320], (150, 150))  # (150, 150, 3) RGB
    frames = []
    for index in range(face_frames + blank_frames):
        frame = np.full((240, 320, 3), 200, dtype=np.uint8)
        if index < face_frames:
            frame[40:190, 10 + 25 * index : 160 + 25 * index] = head
        frames.append(frame)
    return write_video(path, frames)


HEAD = 100  # side in pixels of the head squares in the two-face videos (faces about 45-55 px wide)


@functools.cache
def heads() -> tuple[np.ndarray, np.ndarray]:
    """(HEAD, HEAD, 3) uint8 RGB head squares of the astronaut and of Grace Hopper."""
    astronaut = cv2.resize(data.astronaut()[30:230, 120:320], (HEAD, HEAD), interpolation=cv2.INTER_AREA)
    hopper = cv2.resize(grace_hopper()[100:420, 90:410], (HEAD, HEAD), interpolation=cv2.INTER_AREA)
    return astronaut, hopper


def two_faces_frames(places: list[list[tuple[int, int] | None]]) -> tuple[list[np.ndarray], np.ndarray]:
    """(240, 360, 3) uint8 RGB frames on grey with the astronaut's and Grace Hopper's heads at ``places``.

    ``places[frame]`` is the (left, top) of the astronaut's head square, then of Hopper's,
    None for a head not in the frame; the astronaut is drawn last (in front). Returns the
    frames and (frames, 2, 2) the heads' centres x, y (NaN for a head not in the frame).
    """
    frames, centres = [], np.full((len(places), 2, 2), np.nan)
    for index, frame_places in enumerate(places):
        frame = np.full((240, 360, 3), 190, dtype=np.uint8)
        for person in (1, 0):  # Hopper first: the astronaut passes in front of her
            if frame_places[person] is not None:
                left, top = frame_places[person]
                frame[top : top + HEAD, left : left + HEAD] = heads()[person]
                centres[index, person] = (left + HEAD / 2, top + HEAD / 2)
        frames.append(frame)
    return frames, centres


def crossing_faces(count: int = 20, gap: int = 100) -> tuple[list[np.ndarray], np.ndarray]:
    """`two_faces_frames` in which the astronaut's head moves left to right along the top and
    Grace Hopper's right to left ``gap`` px lower: they pass each other mid-video and swap sides.

    With ``gap`` 100 both faces stay in full view (they pass 93 px apart); with 40 Hopper's
    face is hidden behind the astronaut's head for two frames of 20 and half hidden around them.
    """
    places = []
    for index in range(count):
        step = 240 * index / (count - 1)  # px moved since the first frame
        places.append([(round(10 + step), 40), (round(250 - step), 40 + gap)])
    return two_faces_frames(places)


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


def face_leaves_and_returns(count: int = 30, away: range = range(12, 17)) -> list[np.ndarray]:
    """`two_faces_frames`: Grace Hopper still at the bottom right, the astronaut moving right 4 px a frame
    along the top, out of the picture for the frames in ``away`` and back after them."""
    return two_faces_frames([[None if index in away else (10 + 4 * index, 20), (240, 130)] for index in range(count)])[0]


def serve_mjpeg(frames: list[np.ndarray], fps: float):
    """A network camera on loopback: ``http://127.0.0.1:PORT/cam.mjpg`` streams ``frames`` as MJPEG at ``fps``,
    then the connection closes (the camera is gone). Returns the running server (``shutdown()`` it) and the URL."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            for frame in frames:
                jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))[1].tobytes()
                self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpeg))
                self.wfile.write(jpeg + b"\r\n")
                time.sleep(1 / fps)

        def log_message(self, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/cam.mjpg"
