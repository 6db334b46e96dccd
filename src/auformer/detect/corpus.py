"""Corpus-scale ``auformer detect``: a list or many ranks (torchrun), one CSV per input, a done marker each, a merge.

``OUT/csv/<name>.csv`` holds one input's rows (written as it goes, like every detect CSV) and
``OUT/done/<name>.json`` (written atomically once the input is finished) says it is complete,
with its counts. Inputs are split between ranks by `auformer.detect.shard.assign`; a rank
skips inputs with a done marker, so ``--resume`` redoes only unfinished ones, and a video
cut mid-way continues after its last complete frame (`auformer.detect.writers.CsvWriter`),
whichever rank owns it now. Rank 0 writes ``OUT/detect.json`` before any rank starts and
again, with every rank's counts and throughput, after all have finished. `merge` joins the
finished CSVs into one Parquet file.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from tqdm import tqdm

from auformer.data.images import VIDEO_EXTENSIONS
from auformer.detect.detector import SYNTHETIC_WARNING, Detector
from auformer.detect.runner import Counts, write_results
from auformer.detect.shard import Corpus, assign, from_paths, read_list
from auformer.detect.sources import expand_inputs, image_frames, video_frames
from auformer.detect.writers import SUMMARY_NAME, CsvWriter, Outputs, check_resume, read_summary, run_identity, written_faces
from auformer.engine import distributed
from auformer.errors import AUFormerError
from auformer.files import atomic_path, atomic_write_text, check_apart

CSV_DIR, DONE_DIR, PARQUET_NAME = "csv", "done", "detect.parquet"
WAIT_FOR_RANKS = timedelta(days=7)  # a rank that finishes its share early waits this long for the others


def _corpus(inputs: Iterable[str], list_file: str | None, out: Path) -> Corpus:
    if list_file is not None:
        if inputs:
            raise AUFormerError("give INPUTs or --list FILE, not both")
        return read_list(list_file, out)
    check_apart(out, inputs, inside_ok=True)
    images, videos, _ = expand_inputs(inputs, exclude=out)
    return from_paths([*images, *videos], ", ".join(map(str, inputs)))


def _refuse_or_clear(out: Path, identity: dict, resume: bool, overwrite: bool, info: distributed.DistInfo) -> None:
    """Every rank checks OUT before rank 0 touches it: earlier results need --resume (same checkpoint,
    format and corpus) or --overwrite, which rank 0 carries out."""
    earlier = [path for path in (out / SUMMARY_NAME, out / CSV_DIR, out / DONE_DIR, out / PARQUET_NAME) if path.exists()]
    if earlier and not (resume or overwrite):
        raise AUFormerError(
            f"{out} already holds results ({', '.join(path.name for path in earlier)}): pass --resume to continue "
            "that run, --overwrite to replace it, or choose another --out"
        )
    if resume and earlier:
        check_resume(Outputs(out, {}, None), identity)
        if read_summary(out).get("corpus") != identity["corpus"]:
            raise AUFormerError(
                f"{out}: --resume over another list of inputs than the run there ({identity['corpus']['inputs']} inputs, "
                "other sha256); pass the same inputs, --overwrite, or choose another --out"
            )
    distributed.barrier(info)  # nobody clears or writes until every rank has checked
    if info.is_main:
        if overwrite:
            for folder in (out / CSV_DIR, out / DONE_DIR):
                shutil.rmtree(folder, ignore_errors=True)
            (out / PARQUET_NAME).unlink(missing_ok=True)
        for folder in (out / CSV_DIR, out / DONE_DIR):
            folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / SUMMARY_NAME, json.dumps({**identity, "finished": False}, indent=2) + "\n")
    distributed.barrier(info)


def _reraise(error: Exception) -> None:
    raise error


def _detect_one(detector: Detector, corpus: Corpus, index: int, out: Path, options: dict, progress: tqdm, counts: Counts) -> None:
    """Input ``index`` into ``OUT/csv/<name>.csv``, continuing a cut one; its done marker when complete."""
    name, openface = corpus.name(index), options["format"] == "openface"
    path = corpus.path(index)
    writer = CsvWriter(out / CSV_DIR / f"{name}.csv", openface, resume=True)  # OUT was cleared unless --resume
    if path.suffix.lower() in VIDEO_EXTENSIONS:
        after = writer.done.get(str(path))
        carried = written_faces(writer.path, openface) if after is not None else ([], 0)
        frames = video_frames(path, options["every"], options["start"], options["end"], after)
        write_results(detector, frames, writer, progress, counts, None, carried)
    elif str(path) not in writer.done:  # a photo whose rows were all written before a kill is done
        write_results(detector, image_frames([path], _reraise), writer, progress, counts, None)
    done = _csv_counts(writer.path) if writer.path.is_file() else [0, 0, 0]  # a resumed input's earlier rows too
    marker = {"input": str(path), "csv": f"{CSV_DIR}/{name}.csv", **dict(zip(("frames", "faces", "frames_without_face"), done))}
    atomic_write_text(out / DONE_DIR / f"{name}.json", json.dumps(marker) + "\n")


def _csv_counts(csv_path: Path) -> list[int]:
    """Frames, faces and frames without a face in a finished input's CSV (its done marker's counts)."""
    import pandas as pd

    table = pd.read_csv(csv_path, usecols=["frame", "success"])
    return [int(table["frame"].nunique()), int((table["success"] == 1).sum()), int((table["success"] == 0).sum())]


def detect_corpus(
    out: str | Path,
    checkpoint: str | Path,
    inputs: Iterable[str] = (),
    list_file: str | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    skip_bad: bool = False,
    every: int = 1,
    start: float | None = None,
    end: float | None = None,
    format: str = "auformer",
    **detector_options,
) -> dict | None:
    """Detect AUs in every input of a corpus, this process's share of it when run under torchrun.

    ``inputs``: files and folders, or ``list_file``: one path per line or a CSV with ``path``
    (and ``id``) columns. ``detector_options`` go to `Detector` (``device="cuda"`` becomes
    ``cuda:LOCAL_RANK`` under torchrun). Returns the run's summary on rank 0 (None on the others).
    """
    out, inputs = Path(out), list(inputs)
    device = str(detector_options.pop("device", "cpu"))
    info = distributed.setup("cuda" if device.startswith("cuda") else "cpu", timeout=WAIT_FOR_RANKS)
    corpus = _corpus(inputs, list_file, out)
    detector = Detector(checkpoint, device=str(info.device) if info.enabled else device, **detector_options)
    if detector.synthetic and info.is_main:
        print(SYNTHETIC_WARNING)
    identity = {
        **run_identity(detector, format == "openface", every, start, end),
        "corpus": {"inputs": len(corpus.paths), "sha256": corpus.paths.digest()},
    }
    mine = (assign(corpus.sizes(), info.world_size) == info.rank).nonzero()[0]  # this rank's inputs, in corpus order
    _refuse_or_clear(out, identity, resume, overwrite, info)
    options = {"format": format, "every": every, "start": start, "end": end}
    counts, finished, started = Counts(), 0, time.perf_counter()
    with tqdm(desc=f"rank {info.rank}", unit="frame", disable=not info.is_main) as progress:
        for done, index in enumerate(mine):
            marker = out / DONE_DIR / f"{corpus.name(index)}.json"
            if marker.is_file():
                continue
            progress.set_description(f"rank {info.rank}: input {done + 1}/{len(mine)}")
            try:
                _detect_one(detector, corpus, int(index), out, options, progress, counts)
                finished += 1
            except (AUFormerError, FileNotFoundError) as error:
                counts.skip(error, progress, skip_bad)
    seconds = time.perf_counter() - started
    shard = {
        "rank": info.rank,
        "inputs": len(mine),
        "inputs_done_now": finished,
        "frames_now": counts.frames,
        "faces_now": counts.faces,
        "seconds": round(seconds, 3),
        "frames_per_s": round(counts.frames / seconds, 3) if seconds else None,
        "skipped": counts.skipped,
        "totals": _shard_totals(out, corpus, mine),
    }
    shards = distributed.gather_objects(shard, info)  # waits for the slowest rank
    if not info.is_main:
        return None
    return _write_summary(out, identity, shards, detector)


def _shard_totals(out: Path, corpus: Corpus, mine: Iterable[int]) -> dict:
    """Inputs finished and their frames, faces, frames without a face, over this run and earlier ones (done markers)."""
    totals = {"inputs_done": 0, "frames": 0, "faces": 0, "frames_without_face": 0}
    for index in mine:
        marker = out / DONE_DIR / f"{corpus.name(int(index))}.json"
        if marker.is_file():
            counts = json.loads(marker.read_text())
            totals["inputs_done"] += 1
            for key in ("frames", "faces", "frames_without_face"):
                totals[key] += int(counts[key])
    return totals


def _write_summary(out: Path, identity: dict, shards: list[dict], detector: Detector) -> dict:
    totals = {key: sum(shard["totals"][key] for shard in shards) for key in shards[0]["totals"]}
    skipped = [line for shard in shards for line in shard["skipped"]]
    summary = {
        **identity,
        "finished": True,
        "inputs": identity["corpus"]["inputs"],
        **totals,
        "skipped": skipped,
        "ranks": [{key: value for key, value in shard.items() if key not in ("skipped", "totals")} for shard in shards],
        "face_detector": detector.face_detector.name,
    }
    atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2) + "\n")
    print(
        f"{totals['inputs_done']} of {summary['inputs']} inputs done on {len(shards)} ranks: {totals['frames']} frames, "
        f"{totals['faces']} faces, {totals['frames_without_face']} frames without a face, {len(skipped)} inputs skipped"
    )
    for line in skipped:
        print(f"skipped: {line}")
    print(f"wrote {out / CSV_DIR}/<input>.csv (one per input) and {out / SUMMARY_NAME} (counts, per-rank throughput)")
    return summary


def merge(out: str | Path) -> Path:
    """``detect --merge OUT``: the finished inputs' CSVs (those with a done marker) as one ``OUT/detect.parquet``.

    Same columns as the CSVs; one CSV is read at a time, so memory is one input's rows.
    Needs pyarrow (``pip install auformer[parquet]``).
    """
    try:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq
    except ImportError:
        raise AUFormerError("detect --merge needs pyarrow: pip install 'auformer[parquet]'") from None
    out = Path(out)
    markers = sorted((out / DONE_DIR).glob("*.json")) if (out / DONE_DIR).is_dir() else []
    if not markers:
        raise AUFormerError(f"{out}: no finished inputs to merge (no {DONE_DIR}/*.json; is it a corpus detect's --out?)")
    schema = None
    with atomic_path(out / PARQUET_NAME) as tmp:
        writer = None
        for marker in markers:
            csv_path = out / CSV_DIR / f"{marker.stem}.csv"  # never a name the marker's text could point elsewhere
            if not csv_path.is_file():
                raise AUFormerError(f"{marker}: its CSV {csv_path} is missing")
            if schema is None:
                with open(csv_path, encoding="utf-8") as file:
                    schema = pa.schema([(name, _arrow_type(pa, name)) for name in file.readline().strip().split(",")])
                writer = pq.ParquetWriter(tmp, schema)
            table = pa_csv.read_csv(csv_path, convert_options=pa_csv.ConvertOptions(column_types=schema))
            writer.write_table(table.select(schema.names))
        writer.close()
    print(f"wrote {out / PARQUET_NAME} ({len(markers)} inputs)")
    return out / PARQUET_NAME


def _arrow_type(pa, column: str):
    """The Parquet type of a detect CSV column: the path as text, numbers and 0/1 flags as integers, the rest floats."""
    if column == "input":
        return pa.string()
    if column in ("frame", "face", "face_id", "success") or column.endswith("_c"):
        return pa.int64()
    return pa.float64()
