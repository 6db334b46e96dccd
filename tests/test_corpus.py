"""Corpus-scale `auformer detect`: lists, ids, sharding over torchrun ranks (gloo on loopback), a killed rank, --merge."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from skimage import data

from auformer.cli import main
from auformer.detect.shard import assign, read_list
from auformer.errors import AUFormerError
from face_photos import grace_hopper
from hostile import run_hostile
from media import tiny_checkpoint, write_moving_face_video

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
KEYS = ["input", "frame", "face"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """(checkpoint, folder): three photos (two faces, one blank) and two clips of different lengths."""
    root = tmp_path_factory.mktemp("corpus")
    checkpoint = tiny_checkpoint(root / "tiny", [1, 2, 4, 6, 12])
    folder = root / "media"
    (folder / "clips").mkdir(parents=True)
    cv2.imwrite(str(folder / "astronaut.png"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "hopper.png"), cv2.cvtColor(grace_hopper(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "blank.png"), np.full((96, 128, 3), 90, dtype=np.uint8))
    write_moving_face_video(folder / "clips" / "long.avi", 7, 5)
    write_moving_face_video(folder / "clips" / "short.avi", 5, 2)
    return checkpoint, folder


def detect(*args: str, ranks: int = 1, script: Path | None = None) -> subprocess.CompletedProcess:
    entry = [str(script)] if script is not None else ["-m", "auformer"]
    launch = TORCHRUN if ranks > 1 else [sys.executable]
    return subprocess.run(
        [*launch, *entry, "detect", *args, "--batch-size", "2"], env=ENV, capture_output=True, text=True, timeout=300
    )


def rows_of(out: Path, corpus_mode: bool) -> pd.DataFrame:
    files = sorted((out / "csv").glob("*.csv")) if corpus_mode else sorted(out.glob("*.csv"))
    table = pd.concat([pd.read_csv(path) for path in files], ignore_index=True)
    return table.sort_values(KEYS, na_position="first").reset_index(drop=True)


@pytest.mark.slow
def test_two_ranks_give_the_rows_of_one_process_and_merge_to_parquet(corpus, tmp_path):
    checkpoint, folder = corpus
    one = detect(str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "one"))  # today's single process
    two = detect(str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "two"), ranks=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    expected, got = rows_of(tmp_path / "one", False), rows_of(tmp_path / "two", True)
    assert got[KEYS].astype(str).values.tolist() == expected[KEYS].astype(str).values.tolist()  # every row once
    pd.testing.assert_frame_equal(got, expected, check_exact=False, atol=1e-5)

    summary = json.loads((tmp_path / "two" / "detect.json").read_text())
    assert summary["finished"] and summary["inputs"] == summary["inputs_done"] == 5
    assert summary["frames"] == expected.drop_duplicates(["input", "frame"]).shape[0] == 3 + 12 + 7
    assert [rank["rank"] for rank in summary["ranks"]] == [0, 1] and sum(r["inputs"] for r in summary["ranks"]) == 5
    assert two.stdout.count("inputs done on 2 ranks") == 1  # rank 0 alone reports

    assert main(["detect", "--merge", str(tmp_path / "two")]) == 0
    merged = pd.read_parquet(tmp_path / "two" / "detect.parquet")
    assert list(merged.columns) == list(expected.columns)
    merged = merged.sort_values(KEYS, na_position="first").reset_index(drop=True)
    np.testing.assert_allclose(merged["AU12"].to_numpy(float), expected["AU12"].to_numpy(float), atol=1e-5, equal_nan=True)
    assert merged["AU12_c"].isna().sum() == expected["AU12_c"].isna().sum()


# Run by torchrun in each process: rank 1 writes half a row after its 3rd table and kills itself (a seam patched
# in the test's own process, no production hook), then the CLI runs as `auformer detect ARGS`.
_KILL_RANK_1 = """
import os, signal, sys
from auformer.cli import main
from auformer.detect import writers

write, calls = writers.CsvWriter.write, []

def write_then_die(self, table):
    write(self, table)
    calls.append(1)
    if os.environ["RANK"] == "1" and len(calls) == 3:
        with open(self.path, "a") as file:
            file.write("half,a,row")
        os.kill(os.getpid(), signal.SIGKILL)

writers.CsvWriter.write = write_then_die
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_killed_rank_then_resume_gives_every_frame_once(corpus, tmp_path):
    checkpoint, folder = corpus
    script = tmp_path / "kill_rank_1.py"
    script.write_text(_KILL_RANK_1)
    args = [str(folder), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "run")]
    killed = detect(*args, ranks=2, script=script)
    assert killed.returncode != 0
    cut = rows_of(tmp_path / "run", True) if list((tmp_path / "run" / "csv").glob("*.csv")) else pd.DataFrame()
    assert len(list((tmp_path / "run" / "done").glob("*.json"))) < 5  # some input was left unfinished
    again = folder / "again.txt"
    again.write_text("hopper.png\n")
    refused = ["detect", "--list", str(again), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "run")]
    assert main(refused) == 2  # a folder holding results is refused without --resume (or --overwrite)
    resumed = detect(*args, "--resume", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    rows = rows_of(tmp_path / "run", True)
    frames = rows.drop_duplicates(["input", "frame"])
    assert not rows.duplicated(KEYS).any()  # every face of every frame once
    counts = frames.groupby("input").size().to_dict()
    assert {Path(name).name: count for name, count in counts.items()} == {
        "astronaut.png": 1, "hopper.png": 1, "blank.png": 1, "long.avi": 12, "short.avi": 7,
    }  # fmt: skip
    summary = json.loads((tmp_path / "run" / "detect.json").read_text())
    assert summary["frames"] == len(frames) == 22 and summary["inputs_done"] == 5
    print(
        f"frames after the kill: {len(cut.drop_duplicates(['input', 'frame'])) if len(cut) else 0}; after --resume: {len(frames)}"
    )


def test_list_csv_ids_name_the_outputs(corpus, tmp_path):
    checkpoint, folder = corpus
    listing = folder / "ids.csv"
    listing.write_text("id,path\nP01-a,astronaut.png\nP02,clips/short.avi\nP03,missing.png\n")
    out = tmp_path / "out"
    assert main(["detect", "--list", str(listing), "--checkpoint", str(checkpoint), "--out", str(out), "--skip-bad"]) == 0
    assert sorted(path.name for path in (out / "csv").glob("*.csv")) == ["P01-a.csv", "P02.csv"]
    assert sorted(path.stem for path in (out / "done").glob("*.json")) == ["P01-a", "P02"]
    summary = json.loads((out / "detect.json").read_text())
    assert summary["inputs"] == 3 and summary["inputs_done"] == 2 and len(summary["skipped"]) == 1
    assert "missing.png" in summary["skipped"][0]
    plain = folder / "paths.txt"
    plain.write_text("hopper.png\nclips/long.avi\n")
    assert main(["detect", "--list", str(plain), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "plain")]) == 0
    assert sorted(path.name for path in (tmp_path / "plain" / "csv").glob("*.csv")) == ["0000000_hopper.csv", "0000001_long.csv"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id,path\nA,../outside.png\n", "is not inside"),
        ("id,path\nA,/etc/passwd\n", "is not inside"),
        ("id,path\nA,astronaut.png\nA,hopper.png\n", "given twice"),
        ("id,path\n../evil,astronaut.png\n", "not a plain file name"),
        ("name\nastronaut.png\n", "'path' column"),
    ],
)
def test_hostile_lists_are_refused_in_one_line(corpus, tmp_path, capsys, text, message):
    checkpoint, folder = corpus
    listing = folder / "hostile.csv"
    listing.write_text(text)
    assert main(["detect", "--list", str(listing), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "csv").exists()  # refused before anything was written


@pytest.mark.parametrize("out", [".", "csv", ".."])  # the list's folder, the folder of the entry, one holding both
def test_a_list_entry_in_the_output_folder_is_refused_before_anything_is_cleared(corpus, tmp_path, out):
    """Before: ``--list D/list.txt --out D --overwrite`` cleared ``D/csv/`` (the corpus's own folder) and then reported
    the listed ``csv/a.png`` it had just deleted as ``image file not found``; the plain mode refuses such an OUT."""
    checkpoint, folder = corpus
    data = tmp_path / "data"
    (data / "csv").mkdir(parents=True)
    shutil.copy(folder / "astronaut.png", data / "csv" / "a.png")
    (data / "list.txt").write_text("csv/a.png\n")
    argv = ["detect", "--list", data / "list.txt", "--checkpoint", checkpoint, "--out", data / out, "--overwrite"]
    code, stderr = run_hostile(argv, tmp_path, tmp_path / "elsewhere")  # nothing under tmp_path may change
    assert code == 2 and "list.txt entry 1: path 'csv/a.png' lies in the output folder" in stderr, stderr


@pytest.mark.parametrize("name, text", [("list.csv", "id,path\r\nA,a.png\r\n"), ("list.txt", "a.png\r\n")])
def test_a_list_saved_with_a_byte_order_mark_reads_as_without(tmp_path, name, text):
    """Excel's "CSV UTF-8" starts the file with a BOM: before, a CSV list's first column was '\ufeffid' (its ids
    were ignored; '\ufeffpath': no 'path' column) and the first entry of a text list '\ufeffa.png', not found."""
    listing = tmp_path / name
    listing.write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "a.png").write_bytes(b"")
    corpus = read_list(listing)
    assert corpus.path(0) == tmp_path / "a.png" and corpus.sizes().tolist() == [0]
    assert corpus.name(0) == ("A" if name == "list.csv" else "0000000_a")


def test_list_is_held_compactly(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"videos/clip_{index:06d}.mp4\n" for index in range(1000)))
    corpus = read_list(listing)
    assert len(corpus.paths) == 1000 and corpus.paths[999] == "videos/clip_000999.mp4"
    assert isinstance(corpus.paths._buffer, bytes) and corpus.paths._ends.dtype == np.int64  # no per-row objects
    bad = tmp_path / "bad.txt"
    bad.write_text("/abs.png\n")
    with pytest.raises(AUFormerError, match="bad.txt entry 1"):
        read_list(bad).sizes()


@given(st.lists(st.integers(0, 10**9), max_size=60), st.integers(1, 6))
def test_assign_gives_each_input_one_rank_and_balances_bytes(sizes, world_size):
    sizes = np.array(sizes, dtype=np.int64)
    owner = assign(sizes, world_size)
    assert owner.shape == sizes.shape and ((owner >= 0) & (owner < world_size)).all()
    np.testing.assert_array_equal(owner, assign(sizes, world_size))  # every rank computes the same split
    loads = np.bincount(owner, weights=sizes + 1, minlength=world_size)
    assert loads.max() - loads.min() <= (sizes.max() + 1 if len(sizes) else 0)  # greedy LPT: within one input
