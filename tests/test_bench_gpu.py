"""`benchmarks/bench_gpu.py`, issue 24's GPU rows: the BP4D CV estimate against hand-computed values, a CPU
smoke run that writes its tables, and one clear line where no CUDA device is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks` is a package there

from benchmarks.bench_gpu import cv_seconds, main  # noqa: E402


def test_cv_estimate_by_hand():
    # 3 folds of 140,000 frames: each trains on 93,333.3 for 20 epochs and scores 46,666.7 frames 20 times.
    # 20 * 93,333.3 / 600 = 3,111.1 s + 20 * 46,666.7 / 1,500 = 622.2 s, per fold; x 3 = 11,200 s.
    assert cv_seconds(140_000, 3, 20, 20, 600, 1500, 2000) == pytest.approx(11_200)
    # A loader slower than both: it sets both rates. 20 * 93,333.3 / 400 + 20 * 46,666.7 / 400 = 7,000 s, x 3.
    assert cv_seconds(140_000, 3, 20, 20, 600, 1500, 400) == pytest.approx(21_000)
    # Evaluated once at the end: 3 * (3,111.1 + 31.1) s.
    assert cv_seconds(140_000, 3, 20, 1, 600, 1500, 2000) == pytest.approx(3 * (20 * 140_000 * 2 / 3 / 600 + 140_000 / 3 / 1500))


def test_smoke_run_on_cpu(tmp_path, capsys):
    torch.manual_seed(0)
    assert (
        main(["--out", str(tmp_path), "--device", "cpu", "--quick", "--batch", "8", "--inference-batch", "8", "--workers", "0"])
        == 0
    )
    result = json.loads((tmp_path / "bench_gpu.json").read_text())
    for key in ("train_images_per_s", "inference_images_per_s", "loader_images_per_s", "cv_hours_estimate"):
        assert result[key] > 0, key
    assert result["device"].startswith("CPU") and result["epochs"] == 20 and result["evaluations"] == 20  # the bp4d preset
    table = (tmp_path / "bench_gpu.md").read_text()
    assert "| training images/s |" in table and "BP4D 3-fold CV" in table
    assert f"wrote {tmp_path / 'bench_gpu.json'}" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here")
def test_no_cuda_is_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "gpu")]) == 2
    assert capsys.readouterr().out.strip().count("\n") == 0
    assert not (tmp_path / "gpu").exists()  # nothing written
