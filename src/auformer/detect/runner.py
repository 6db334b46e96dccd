"""``auformer detect``'s runner: inputs -> sources -> `Detector` -> CSV writers, with counts, progress and outputs.

Photos go into ``OUT/images.csv``, each video into ``OUT/<video>.csv`` (`auformer.detect.writers`),
with ``detect.json`` written first (what a ``--resume`` is checked against) and again at the end
with the counts. The stages it joins are `auformer.detect.sources`, `auformer.detect.pipeline`
(inside the `Detector`) and `auformer.detect.writers`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from auformer.detect.detector import SYNTHETIC_WARNING, Detector, parse_thresholds
from auformer.detect.sources import Frame, count_video_frames, expand_inputs, image_frames, video_frames
from auformer.detect.writers import (
    ALIGNED_DIR,
    IMAGES_CSV,
    SUMMARY_NAME,
    CsvWriter,
    Outputs,
    check_resume,
    run_identity,
    written_faces,
)
from auformer.errors import AUFormerError
from auformer.faces import AlignedFace, Face
from auformer.files import atomic_path, atomic_write_text, check_apart


@dataclass
class Counts:
    frames: int = 0
    faces: int = 0
    frames_without_face: int = 0
    unreadable: int = 0
    skipped: list[str] = field(default_factory=list)  # one line per skipped input (--skip-bad)

    def skip(self, error: Exception, progress: tqdm, skip_bad: bool) -> None:
        """Count and list a bad input (``--skip-bad``), or stop the run with its one-line error."""
        if not skip_bad:
            raise error
        progress.write(f"skipped: {error}")
        self.unreadable += 1
        self.skipped.append(str(error))


def write_results(
    detector: Detector,
    frames: Iterable[Frame],
    writer: CsvWriter,
    progress: tqdm,
    counts: Counts,
    plot_prefix: Mapping[str, Path] | None,
    carried: tuple[list[Face], int] = ([], 0),
    aligned_prefix: Mapping[str, Path] | None = None,
) -> None:
    """Feed ``frames`` through ``detector`` into ``writer``, updating the progress bar and counts.

    ``plot_prefix``: input -> path prefix of its face plots (``PREFIX_face0.png``), None for no plots.
    ``carried``: a resumed video's `written_faces`. ``aligned_prefix``: input -> path prefix of its
    aligned crops (``PREFIX_frame<N>_face<K>.png``, `--save-aligned`), None for none.
    """
    started, faces_before = time.perf_counter(), counts.faces
    note = " (synthetic checkpoint: not meaningful)" if detector.synthetic else ""  # plot titles
    for table, faces in detector.iter_results(frames, *carried):
        writer.write(table)
        new_frames = table.drop_duplicates(["input", "frame"])
        counts.frames += len(new_frames)
        counts.faces += len(faces)
        counts.frames_without_face += int((table["success"] == 0).sum())
        progress.update(len(new_frames))
        progress.set_postfix(
            faces=counts.faces, faces_per_s=f"{(counts.faces - faces_before) / (time.perf_counter() - started):.1f}"
        )
        if aligned_prefix is not None:
            _save_aligned(table, faces, aligned_prefix)
        if plot_prefix is not None:
            detector.plot_faces(
                table,
                faces,
                lambda row: Path(f"{plot_prefix[row['input']]}_face{row['face']}.png"),
                lambda row: f"{row['input']}, face {row['face']}{note}",
            )
    if not writer.path.is_file():  # no row (every photo skipped, no frame from --start on): the header alone,
        writer.write(detector.empty_table())  # so that every CSV a run lists exists (and `merge` finds it)


def detector_options(args: argparse.Namespace) -> dict:
    """`Detector` keyword arguments from ``auformer detect``'s flags (one process or a corpus run alike)."""
    return {
        "face_detector": args.face_detector,
        "device": args.device,
        "batch_size": args.batch_size,
        "threshold": parse_thresholds(args.threshold),  # None: the checkpoint's tuned thresholds, else 0.5
        "backbone_weights": args.backbone_weights,
        "detect_every": args.detect_every,
        "amp": args.amp,
        "runtime": args.runtime,
        "landmarks": args.landmarks,
        "pose": args.pose,
    }


def _save_aligned(table: pd.DataFrame, faces: list[AlignedFace], prefix: Mapping[str, Path]) -> None:
    """Each face's aligned crop (what the model saw, before its resize) as a PNG; ``faces`` in ``success=1`` row order."""
    for (_, row), face in zip(table[table["success"] == 1].iterrows(), faces):
        path = Path(f"{prefix[row['input']]}_frame{row['frame']}_face{row['face']}.png")
        with atomic_path(path) as tmp:
            Image.fromarray(face.crop).save(tmp)


def run_detect(args: argparse.Namespace) -> None:
    """``auformer detect``: photos into ``OUT/images.csv``, each video into ``OUT/<video>.csv``.

    OUT may lie inside an input folder (it is then not searched), but may not be or hold an input.
    A folder that already holds results is refused unless ``--resume`` (checked: same checkpoint,
    format and columns) or ``--overwrite`` is given; ``detect.json`` is written first, with what
    a resumed run is checked against, and again at the end with the counts.
    """
    out = Path(args.out)
    check_apart(out, args.inputs, inside_ok=True)
    images, videos, ignored = expand_inputs(args.inputs, exclude=out)
    if not images and not videos:
        raise AUFormerError(f"no images or videos found in {', '.join(map(str, args.inputs))}")
    outputs = Outputs.plan(out, images, videos, args.plot, args.save_aligned)
    previous = outputs.previous()
    if previous and not (args.resume or args.overwrite):
        raise AUFormerError(
            f"{out} already holds results ({', '.join(path.name for path in previous[:3])}"
            f"{', ...' if len(previous) > 3 else ''}): pass --resume to continue that run, --overwrite to replace it, "
            "or choose another --out"
        )
    detector = Detector(args.checkpoint, **detector_options(args))
    if detector.synthetic:
        print(SYNTHETIC_WARNING)
        detector.synthetic_warned = True  # said here and at the end, not again as a Python warning
    openface = args.format == "openface"
    identity = run_identity(detector, openface, args.every, args.start, args.end)
    if args.resume:
        check_resume(outputs, identity)
    elif args.overwrite:
        outputs.remove_previous()
    plot_dir = out / "plots" if args.plot else None
    for folder in (out, plot_dir):
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
    csv_names = [path.name for path in outputs.csv_files[0 if images else 1 :]]
    atomic_write_text(out / SUMMARY_NAME, json.dumps({**identity, "finished": False, "csv": csv_names}, indent=2) + "\n")
    counts = Counts()
    written: list[Path] = []
    if images:
        writer = CsvWriter(out / IMAGES_CSV, openface, args.resume)
        todo = [path for path in images if str(path) not in writer.done]
        with tqdm(total=len(images), initial=len(images) - len(todo), desc="images", unit="image") as progress:

            def skip(error: Exception) -> None:
                counts.skip(error, progress, args.skip_bad)
                progress.update(1)

            frames = image_frames(todo, skip)
            write_results(detector, frames, writer, progress, counts, outputs.plot_prefix, aligned_prefix=outputs.aligned_prefix)
        written.append(writer.path)
    for video, csv_path in outputs.video_csv.items():
        writer = CsvWriter(csv_path, openface, args.resume)
        total = count_video_frames(video, args.every, args.start, args.end)
        after = writer.done.get(str(video))
        carried = ([], 0)
        if after is not None:
            print(f"resuming {writer.path} after frame {after}")
            carried = written_faces(writer.path, openface)  # the video's face numbers continue
        with tqdm(total=total, desc=video.name, unit="frame") as progress:
            try:
                frames = video_frames(video, args.every, args.start, args.end, after)
                write_results(detector, frames, writer, progress, counts, None, carried, outputs.aligned_prefix)
            except (AUFormerError, FileNotFoundError) as error:
                counts.skip(error, progress, args.skip_bad)
                if not writer.path.is_file():
                    continue
        written.append(writer.path)
        if plot_dir is not None and writer.rows:
            from auformer.viz import plot_au_timeseries  # lazy: matplotlib takes 0.3 s to import, for --plot only

            plot_au_timeseries(
                pd.read_csv(writer.path),
                plot_dir / f"{writer.path.stem}_aus.png",
                dict(zip(detector.au_columns, detector.thresholds)),
            )
    print(
        f"{counts.frames} frames ({len(images)} images, {len(videos)} videos): {counts.faces} faces, "
        f"{counts.frames_without_face} frames without a face, {counts.unreadable} unreadable inputs skipped"
        + (f", {ignored} files with other extensions ignored" if ignored else "")
    )
    for line in counts.skipped:
        print(f"skipped: {line}")
    summary = {
        **identity,
        "finished": True,
        "frames": counts.frames,
        "faces": counts.faces,
        "frames_without_face": counts.frames_without_face,
        "skipped": counts.skipped,
        "ignored_files": ignored,
        "csv": [path.name for path in written],
        "face_detector": detector.face_detector.name,  # what `auto` resolved to
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    for path in written:
        print(f"wrote {path}")
    print(f"wrote {out / SUMMARY_NAME} (checkpoint, counts and skipped inputs)")
    if plot_dir is not None:
        print(f"plots in {plot_dir}")
    if outputs.aligned_prefix is not None:
        print(f"aligned face crops in {out / ALIGNED_DIR}")
    if detector.synthetic:
        print(SYNTHETIC_WARNING)
