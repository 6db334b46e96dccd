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


# ---------------------------------------------------------------- another run's state (issue 18)


@pytest.fixture(scope="module")
def saved_state(tmp_path_factory) -> tuple[Path, dict]:
    """A run's folder after its set-up and one resume point (no training needed to check the state)."""
    from auformer.config import load_config
    from auformer.engine.trainer import Trainer

    run = tmp_path_factory.mktemp("run")
    preset = write_tiny_preset(run.parent / "tiny.yaml", train={"epochs": 1})
    trainer = Trainer(load_config(preset), run, verbose=False)
    trainer.setup()
    trainer._save_state()
    return run, torch.load(run / "train_state.pt", weights_only=True)


def _resume_setup(run: Path, state: dict, tmp_path: Path, **config_changes: dict) -> None:
    """Set up ``--resume`` of a copy of ``run`` whose train_state.pt is ``state`` and config.yaml has the changes."""
    import shutil

    import yaml

    from auformer.config import apply_values, load_config, save_config
    from auformer.engine.trainer import Trainer

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    config = apply_values(config_changes, load_config(str(run / "config.yaml")))
    save_config(config, copy / "config.yaml")
    torch.save(state, copy / "train_state.pt")
    assert yaml.safe_load((copy / "config.yaml").read_text())
    Trainer(config, copy, resume=True, verbose=False).setup()


def test_resume_refuses_another_runs_state(saved_state, tmp_path):
    run, state = saved_state
    _resume_setup(run, state, tmp_path / "same")  # this run's own state: accepted
    with pytest.raises(ValueError, match=r"train_state.pt belongs to another run: train.lr is 0.003 there, 0.001 here"):
        _resume_setup(run, state, tmp_path / "lr", train={"lr": 1e-3})
    with pytest.raises(
        ValueError,
        match=r"train_state.pt belongs to another run: AUs \[1, 2, 4\] there, \[1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 25, 26\] here",
    ):
        _resume_setup(run, {**state, "aus": [1, 2, 4]}, tmp_path / "aus")
    with pytest.raises(ValueError, match="run was started with 2 processes; resume it with the same number"):
        _resume_setup(run, {**state, "world_size": 2}, tmp_path / "processes")


def _without(state: dict, *keys: str) -> dict:
    return {k: v for k, v in state.items() if k not in keys}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: _without(s, "epoch"), "train_state.pt: epoch: missing"),
        (lambda s: {**s, "epoch": "1"}, "train_state.pt: epoch: expected int, got str"),
        (lambda s: {**s, "global_step": -5}, "negative epoch, batch or step counters"),
        (lambda s: {**s, "rng": []}, r"train_state.pt: rng: 0 entries, expected 1"),
        (lambda s: {**s, "scheduler": {}}, "train_state.pt: scheduler: keys"),
        (lambda s: {**s, "model": {k: v[:1] for k, v in s["model"].items()}}, "does not match the model of config.yaml: shape"),
        (
            lambda s: {**s, "optimizer": {**s["optimizer"], "state": {0: {"exp_avg": torch.zeros(7), "step": torch.zeros(())}}}},
            r"optimizer.state\[0\].exp_avg: not a tensor of shape",
        ),
        (
            lambda s: {**s, "optimizer": {**s["optimizer"], "param_groups": s["optimizer"]["param_groups"][:1]}},
            "optimizer.param_groups",
        ),
        (lambda s: [s], "not a training state"),
    ],
)
def test_resume_refuses_a_broken_state_in_one_line(saved_state, tmp_path, edit, message):
    run, state = saved_state
    with pytest.raises(ValueError, match=message) as error:
        _resume_setup(run, edit(state), tmp_path)
    assert "\n" not in str(error.value)


def test_a_state_from_before_the_config_was_recorded_still_resumes(saved_state, tmp_path):
    run, state = saved_state
    _resume_setup(run, _without(state, "config", "aus"), tmp_path)
