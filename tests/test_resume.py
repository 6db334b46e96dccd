"""Kill a real training process with SIGKILL mid-epoch, resume it, and get the uninterrupted run's results."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from test_train import write_tiny_preset

# 160 training faces at batch 16: 10 steps an epoch, a resume point every 3 steps. The step
# budget (16 steps) ends the second epoch after 6 of its 10 batches.
LENGTHS = {"epochs": {"epochs": 2}, "steps": {"steps": 16}}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # same arithmetic in every process


def _train(preset: str, out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "auformer", "train", "--preset", preset, "--out", str(out)]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for_mid_epoch_state(process: subprocess.Popen, state_file: Path, epoch: int, timeout: float = 120) -> None:
    """Poll train_state.pt until it records a point inside ``epoch`` (0-based)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"training ended before it could be killed: {process.stderr.read()}"
        if state_file.is_file():
            state = torch.load(state_file, weights_only=True)
            if state["epoch"] == epoch and state["micro_done"] > 0:
                return
        time.sleep(0.02)
    raise AssertionError("no mid-epoch resume point appeared")


def _kill_mid_epoch(preset: str, out: Path, epoch: int, attempts: int = 3) -> dict:
    """Start a run, SIGKILL it once a resume point inside ``epoch`` is on disk; return the state it left.

    On a loaded machine the run can write its next resume point (the epoch's end) between the poll
    and the signal; such a kill is not mid-epoch, so the run is started afresh (at most ``attempts`` times).
    """
    for _ in range(attempts):
        shutil.rmtree(out, ignore_errors=True)
        victim = _train(preset, out)
        _wait_for_mid_epoch_state(victim, out / "train_state.pt", epoch)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert victim.returncode == -signal.SIGKILL
        state = torch.load(out / "train_state.pt", weights_only=True)
        if state["epoch"] == epoch:
            return state
    return state


@pytest.mark.slow
@pytest.mark.parametrize("length", LENGTHS)
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(tmp_path, length):
    preset = write_tiny_preset(tmp_path / "tiny.yaml", train={**LENGTHS[length], "checkpoint_every": 3})
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    uninterrupted = _train(preset, reference)

    state = _kill_mid_epoch(preset, killed, epoch=1)
    assert state["epoch"] == 1 and 0 < state["micro_done"] < 10  # really mid-epoch
    assert not (killed / "metrics.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "auformer", "train", "--resume", str(killed)], env=ENV,
                             capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    assert uninterrupted.wait() == 0, uninterrupted.stderr.read()

    expected, got = (json.loads((run / "metrics.json").read_text()) for run in (reference, killed))
    assert got["mean_f1"] == pytest.approx(expected["mean_f1"], abs=1e-9)
    assert {au: s["f1"] for au, s in got["per_au"].items()} == pytest.approx(
        {au: s["f1"] for au, s in expected["per_au"].items()}
    )
    a = pd.read_csv(reference / "predictions.csv").filter(like="_prob").to_numpy()
    b = pd.read_csv(killed / "predictions.csv").filter(like="_prob").to_numpy()
    np.testing.assert_allclose(b, a, atol=1e-6)
    history_a, history_b = pd.read_csv(reference / "metrics.csv"), pd.read_csv(killed / "metrics.csv")
    assert history_b["epoch"].tolist() == [1, 2]
    np.testing.assert_allclose(history_b["train_loss"], history_a["train_loss"], rtol=1e-6)
    steps = {"epochs": 20, "steps": 16}[length]
    assert json.loads((killed / "best.json").read_text())["extra"]["steps_completed"] == steps
