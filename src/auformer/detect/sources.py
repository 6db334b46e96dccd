"""Frame sources: photos, video files and folders of them as a stream of `Frame`, plus background prefetch.

A source is any iterable of `Frame` in reading order (`FrameSource`); the face pipeline and
the `Detector` take one and know nothing of where frames come from, so a new source
(a webcam, a network stream, one shard of a distributed run) only has to yield frames.
A video's frames must have increasing ``index``; a new ``input`` (or a jump back) starts
a new face track.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from auformer.data.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_size, open_video, read_rgb
from auformer.errors import AUFormerError
from auformer.files import resolve

PREFETCH = 16  # frames each pipeline stage may run ahead of the next (16 decoded 1080p frames: 100 MB)


@dataclass
class Frame:
    """One image to analyse: a photo, or one decoded video frame."""

    input: str  # file path, or "<array>" for arrays passed to the API
    index: int  # frame number in the video (0 for photos)
    time_s: float  # seconds from the start of the video (0 for photos)
    image: np.ndarray  # (H, W, 3) uint8 RGB


FrameSource = Iterable[Frame]  # what every stage downstream takes
ARRAY_INPUT = "<array>"  # the ``input`` of frames given as arrays


def as_frames(items: Iterable[Frame | np.ndarray]) -> Iterator[Frame]:
    """``Frame`` s as they are; uint8 (H, W, 3) RGB arrays as frames 0, 1, 2, ... of one ``"<array>"``
    input, 0.1 s apart (a 10 fps stream, e.g. from a camera: pass `Frame` s for real times)."""
    for index, item in enumerate(items):
        yield item if isinstance(item, Frame) else Frame(ARRAY_INPUT, index, index / 10, item)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB: the decoder training uses (:func:`auformer.data.images.read_rgb`)."""
    return read_rgb(path)


def image_frames(paths: Iterable[Path], on_error: Callable[[Exception], None]) -> Iterator[Frame]:
    """Photos as frames; an unreadable file goes to ``on_error`` (which re-raises it to stop, or returns to skip it)."""
    for path in paths:
        try:
            yield Frame(str(path), 0, 0.0, read_image(path))
        except (AUFormerError, FileNotFoundError) as error:
            on_error(error)


def _frame_range(fps: float, start: float | None, end: float | None) -> tuple[int, int | None]:
    """First and last (exclusive, None = to the end) frame numbers of ``start``-``end`` seconds."""
    return round((start or 0.0) * fps), (round(end * fps) if end is not None else None)


def video_frames(
    path: str | os.PathLike, every: int = 1, start: float | None = None, end: float | None = None, after: int | None = None
) -> Iterator[Frame]:
    """Decode every ``every``-th frame of a video between ``start`` and ``end`` seconds.

    ``after`` (a resumed run) skips the frames up to and including that frame number,
    keeping the ``every`` grid. A stream that stops before the container's frame count
    raises an :class:`AUFormerError` after the frames it did decode; so does a video without a frame.
    """
    if every < 1:
        raise AUFormerError(f"every must be a positive integer, got {every}")
    capture = open_video(path)  # the image gate's size checks, before a frame is decoded
    fps = capture.get(cv2.CAP_PROP_FPS)
    first, last = _frame_range(fps, start, end)
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    if first > 0:
        capture.set(cv2.CAP_PROP_POS_FRAMES, first)
    index = first
    try:
        while last is None or index < last:
            if (index - first) % every or (after is not None and index <= after):
                ok = capture.grab()  # skipped frame: advance without decoding the image
            else:
                ok, image_bgr = capture.read()
                if ok:
                    yield Frame(str(path), index, index / fps, cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
            if not ok:
                break
            index += 1
    finally:
        capture.release()
    expected = total if last is None else min(total, last)
    if index < expected:
        raise AUFormerError(f"{path}: decoding stopped at frame {index} of {expected} (truncated or corrupt video)")
    if total <= 0 and index == first and (last is None or last > first):  # not one frame where one was asked for
        raise AUFormerError(f"{path}: no frames (an empty video)")  # a bad input, not a CSV with no rows


def count_video_frames(
    path: str | os.PathLike, every: int = 1, start: float | None = None, end: float | None = None
) -> int | None:
    """How many frames `video_frames` will yield, from the container's frame count (None if unknown)."""
    capture = cv2.VideoCapture(str(path))
    fps, total = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    if not fps > 0 or total <= 0:
        return None
    first, last = _frame_range(fps, start, end)
    last = total if last is None else min(total, last)
    return max(0, -(-(last - first) // every))  # ceil((last - first) / every)


def check_name(path: Path) -> Path:
    """``path``, or one line refusing a name the result tables cannot hold as their ``input`` cell.

    A name that is not UTF-8 (bytes from another system's encoding; Python holds them as lone
    surrogates) cannot be written to a UTF-8 CSV, and a carriage return is written unquoted by
    pandas, so every CSV reader would split the row there.
    """
    text = str(path)
    try:
        text.encode()
    except UnicodeEncodeError:
        raise AUFormerError(f"{text.encode(errors='backslashreplace').decode()}: file name is not UTF-8; rename it") from None
    if "\r" in text:
        raise AUFormerError(f"{text!r}: file name holds a carriage return (\\r); rename it")
    return path


def expand_inputs(
    inputs: Iterable[str | os.PathLike], exclude: str | os.PathLike | None = None
) -> tuple[list[Path], list[Path], int]:
    """Split inputs into (images, videos, ignored); folders are searched recursively.

    A missing input raises ``FileNotFoundError`` before any work starts; files in
    folders with other extensions are counted as ignored; an explicitly named file
    with an unknown extension is treated as an image (reading it reports it if it is not).
    A file named twice (``photos/ photos/a.jpg``) is analysed once; the folder ``exclude``
    (the output folder, when it lies inside an input folder) is not searched. A file name the
    tables cannot hold (`check_name`) stops the run before any work, like a missing input.
    """
    images: list[Path] = []
    videos: list[Path] = []
    ignored = 0
    skip = resolve(exclude) if exclude is not None else None
    seen: set[Path] = set()
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.is_file() and not (skip and resolve(p.parent).is_relative_to(skip)))
        elif item.is_file():
            files = [item]
        else:
            raise FileNotFoundError(f"input not found: {item}")
        for file in map(check_name, files):
            if (real := resolve(file)) in seen:
                continue
            seen.add(real)
            suffix = file.suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                videos.append(file)
            elif suffix in IMAGE_EXTENSIONS or not item.is_dir():
                images.append(file)
            else:
                ignored += 1
    return images, videos, ignored


STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https")  # network sources `open_stream` accepts
LOST_AFTER_S = 2.0  # a camera or stream that gives no frame for this long is lost


class SourceLost(AUFormerError):
    """A camera or stream stopped giving frames mid-way (unplugged, closed, network gone)."""


def open_stream(source: str) -> tuple[cv2.VideoCapture, bool]:
    """An opened capture of a camera (``0``, ``/dev/video0``), a network stream (``rtsp://``, ``http://``...)
    or a video file, and whether it is live (a camera or stream) rather than a file."""
    if source.isdigit() or re.fullmatch(r"/dev/video\d+", source):
        capture = cv2.VideoCapture(int(source) if source.isdigit() else source, cv2.CAP_V4L2)
        what = f"camera {source}"
    elif re.match(r"[a-z][a-z0-9+.-]*://", source, re.IGNORECASE):
        if source.split("://")[0].lower() not in STREAM_SCHEMES:
            raise AUFormerError(f"{source}: unsupported stream address (use {', '.join(STREAM_SCHEMES)}, a camera or a file)")
        capture = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
        what = f"stream {source}"
    else:
        return open_video(source), False  # the image gate's checks; a missing file is FileNotFoundError
    if not capture.isOpened():
        capture.release()
        raise AUFormerError(f"cannot open {what}: no such device or address, no permission, or in use by another program")
    return capture, True


def stream_frames(source: str, realtime: bool = True, lost_after: float = LOST_AFTER_S) -> Iterator[Frame]:
    """Frames of a camera, stream or video file as they come, numbered from 0.

    A file plays at its own frame rate when ``realtime`` (a recorded clip standing in for a
    camera), else as fast as it is read; its ``time_s`` is its own clock, a live source's the
    seconds since it opened. A live source that gives no frame for ``lost_after`` seconds
    raises `SourceLost` after the frames it gave; a file that stops before its frame count,
    an `AUFormerError`.
    """
    capture, live = open_stream(source)  # now, not at the first frame: a source that cannot open fails here
    return _read_stream(source, capture, live, realtime, lost_after)


def _read_stream(source: str, capture: cv2.VideoCapture, live: bool, realtime: bool, lost_after: float) -> Iterator[Frame]:
    fps, total = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    started = last_frame = time.perf_counter()
    index = 0
    try:
        while True:
            ok, image_bgr = capture.read()
            now = time.perf_counter()
            if not ok:
                if not live:
                    break
                if now - last_frame > lost_after:
                    raise SourceLost(
                        f"{source}: lost after frame {index - 1} (no frame for {lost_after:g} s: unplugged, closed or gone)"
                    )
                time.sleep(0.05)
                continue
            if index == 0:
                check_size(source, image_bgr.shape[1], image_bgr.shape[0])  # a stream's size is known only now
            last_frame = now
            time_s = index / fps if not live else now - started
            if not live and realtime:
                time.sleep(max(0.0, started + time_s - now))  # play at the file's own rate
            yield Frame(source, index, time_s, cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB))
            index += 1
    finally:
        capture.release()
    if index < total:
        raise AUFormerError(f"{source}: decoding stopped at frame {index} of {total} (truncated or corrupt video)")


def in_background(items: Iterable, depth: int = PREFETCH) -> Iterator:
    """``items`` produced by a worker thread, up to ``depth`` ahead of the consumer, in order.

    An exception in the worker (``KeyboardInterrupt`` included) is raised in the consumer
    after the items produced before it; a consumer that stops early stops the worker.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, which re-raises it)
            put((done, error))
        finally:
            if hasattr(iterator, "close"):
                iterator.close()  # a generator's own clean-up (a nested stage, a video capture) runs now

    worker = threading.Thread(target=work, name="auformer-detect", daemon=True)
    worker.start()
    try:
        while True:
            item, error = buffer.get()
            if item is done:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        worker.join()
