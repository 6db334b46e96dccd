"""DistributedDataParallel on CPU: 2 gloo processes (torchrun) give the single-process results."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from test_train import write_tiny_preset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    # No augmentation and no dropout (TINY): the only difference left is where the batch is split.
    # The batch-form WDI is a dice over each process's local batch (docs/losses.md), so this
    # equivalence is checked with the per-sample form, whose batch mean does not depend on the split.
    preset = write_tiny_preset(
        tmp_path / "tiny.yaml", train={"epochs": 2, "checkpoint_every": 100}, loss={"wdi_reduction": "sample"}
    )
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    one = subprocess.Popen([sys.executable, "-m", "auformer", "train", "--preset", preset, "--out", str(single)],
                           env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run([*torchrun, "-m", "auformer", "train", "--preset", preset, "--out", str(ddp)],
                         env=ENV, capture_output=True, text=True)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert one.wait() == 0, one.stderr.read()[-3000:]

    assert two.stdout.count("outputs written to") == 1  # only rank 0 prints and writes
    expected, got = (json.loads((run / "metrics.json").read_text()) for run in (single, ddp))
    assert got["mean_f1"] == pytest.approx(expected["mean_f1"], abs=0.02)
    a = pd.read_csv(single / "predictions.csv")
    b = pd.read_csv(ddp / "predictions.csv")
    assert b["image"].tolist() == a["image"].tolist()  # every test image once, in order, despite sharding
    np.testing.assert_allclose(b.filter(like="_prob").to_numpy(), a.filter(like="_prob").to_numpy(), atol=2e-3)
    history_a, history_b = pd.read_csv(single / "metrics.csv"), pd.read_csv(ddp / "metrics.csv")
    np.testing.assert_allclose(history_b["train_loss"], history_a["train_loss"], rtol=1e-3)
