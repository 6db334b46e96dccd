"""Killed work: SIGKILL inside a checkpoint write, a NaN loss, and `auformer detect --resume` after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import auformer
from auformer.cli import main
from auformer.config import load_config
from auformer.engine import build, checkpointing, trainer
from auformer.errors import AUFormerError
from auformer.model.checkpoint import load_checkpoint
from test_bad_inputs import noise_video
from test_train import write_tiny_preset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TINY_MODEL = {"backbone": "vit_tiny_patch16_224", "backbone_weights": "random", "img_size": 32, "aus": [1, 2, 4],
              "backbone_kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}}  # fmt: skip

# The child saves version 1 of a checkpoint and a train state, then starts version 2 with
# writers slowed down to write half their bytes, announce it and sleep: it is killed there.
_WRITER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import torch
    import auformer
    from auformer.engine import checkpointing
    import auformer.model.checkpoint as ckpt

    out, kwargs = Path(sys.argv[1]), json.loads(sys.argv[2])
    torch.manual_seed(1)
    model = auformer.build_model(3, **kwargs)
    auformer.save_checkpoint(model, out / "last", extra={"version": 1})
    checkpointing.save_train_state(out, {"version": torch.tensor(1), "weights": torch.ones(1000)})

    def half_then_hang(write):
        def slow(obj, path, *args, **kwargs):
            write(obj, path, *args, **kwargs)
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            (out / "writing").write_text(str(path))
            time.sleep(600)
        return slow

    ckpt.save_file = half_then_hang(ckpt.save_file)
    checkpointing.torch.save = half_then_hang(torch.save)
    torch.nn.init.ones_(model.head.weight)
    if sys.argv[3] == "checkpoint":
        auformer.save_checkpoint(model, out / "last", extra={"version": 2})
    else:
        checkpointing.save_train_state(out, {"version": torch.tensor(2), "weights": torch.zeros(1000)})
""")


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("what", ["checkpoint", "train_state"])
def test_sigkill_inside_checkpoint_write_keeps_previous(tmp_path, what):
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path), json.dumps(TINY_MODEL), what], env=ENV,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for(tmp_path / "writing", child)
    half_written = Path((tmp_path / "writing").read_text())
    assert half_written.exists() and half_written.name.startswith(".")  # the temporary file, beside the real one
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL
    model = load_checkpoint(tmp_path / "last")  # version 1 is whole and loads
    assert auformer.model.checkpoint.read_checkpoint_meta(tmp_path / "last")["extra"] == {"version": 1}
    assert not torch.all(model.head.weight == 1)
    state = checkpointing.load_train_state(tmp_path)
    assert int(state["version"]) == 1 and torch.all(state["weights"] == 1)


def test_nan_loss_stops_naming_the_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    config = load_config(write_tiny_preset(tmp_path / "tiny.yaml", train={"epochs": 1, "checkpoint_every": 2}))
    run = trainer.Trainer(config, tmp_path / "run", verbose=False)
    run.setup()
    real_loss, calls = run.loss_fn, []

    def loss_nan_at_step_5(output, targets, rate, intensity=None):
        calls.append(1)
        terms = real_loss(output, targets, rate, intensity)
        return {**terms, "total": terms["total"] * float("nan")} if len(calls) == 5 else terms

    run.loss_fn = loss_nan_at_step_5
    with pytest.raises(AUFormerError, match=r"training loss is nan at step 5 \(epoch 1, batch 5\); stopped") as caught:
        run.train()
    assert "\n" not in str(caught.value)
    state = checkpointing.load_train_state(tmp_path / "run")
    assert state["global_step"] == 4  # the checkpoint of step 4, the last good one
    assert all(torch.isfinite(value).all() for value in state["model"].values())
    assert torch.isfinite(load_checkpoint(tmp_path / "run" / "last").head.weight).all()


# ---------------------------------------------------------------- detect --resume

FRAMES = 200


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    """20 s of 10 fps MJPEG, 48x48 random frames."""
    return noise_video(tmp_path_factory.mktemp("video") / "long.avi", FRAMES, 48, 48)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    auformer.save_checkpoint(auformer.build_model(3, **TINY_MODEL), path)
    return path


def _detect(video: Path, checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["detect", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--face-detector", "none",
            "--batch-size", "4", *extra]  # fmt: skip


@pytest.mark.parametrize("openface", [False, True])
def test_detect_resume_after_cut_csv(long_video, tiny_checkpoint, tmp_path, openface):
    fmt = ["--format", "openface"] if openface else []
    assert main(_detect(long_video, tiny_checkpoint, tmp_path / "full", *fmt)) == 0
    full = (tmp_path / "full" / "long.csv").read_bytes()
    (tmp_path / "cut").mkdir()
    cut = full[: len(full) * 2 // 5]  # ends inside a line
    assert not cut.endswith(b"\n")
    (tmp_path / "cut" / "long.csv").write_bytes(cut)
    (tmp_path / "cut" / "detect.json").write_bytes((tmp_path / "full" / "detect.json").read_bytes())  # what wrote it
    assert main(_detect(long_video, tiny_checkpoint, tmp_path / "cut", "--resume", *fmt)) == 0
    resumed = pd.read_csv(tmp_path / "cut" / "long.csv")
    start = 1 if openface else 0
    assert resumed["frame"].tolist() == list(range(start, FRAMES + start))  # every frame exactly once
    pd.testing.assert_frame_equal(resumed, pd.read_csv(tmp_path / "full" / "long.csv"), atol=1e-5)


@pytest.mark.slow
def test_detect_killed_then_resumed_writes_every_frame_once(long_video, tiny_checkpoint, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "auformer", *_detect(long_video, tiny_checkpoint, out, "--batch-size", "2")]
    victim = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    csv_path = out / "long.csv"
    deadline = time.monotonic() + 120
    while not (csv_path.is_file() and csv_path.stat().st_size > 8_000):
        assert victim.poll() is None, f"detection ended before it could be killed: {victim.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    written = pd.read_csv(csv_path, on_bad_lines="skip")
    assert 0 < written["frame"].max() < FRAMES - 1  # really killed mid-video
    resumed = subprocess.run([sys.executable, "-m", "auformer", *_detect(long_video, tiny_checkpoint, out, "--resume")],
                             env=ENV, capture_output=True, text=True, check=False)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {csv_path} after frame" in resumed.stdout
    frames = pd.read_csv(csv_path)["frame"].tolist()
    assert frames == list(range(FRAMES))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_training_loss_finite_on_extreme_logits_under_low_precision(dtype):
    """The trainer's objective on a model whose head saturates: finite loss and gradients (bf16 autocast on CPU;
    fp16 through the logits cast to half, as a CUDA fp16 autocast run would hand them over)."""
    torch.manual_seed(0)
    model = auformer.build_model(3, **TINY_MODEL)
    with torch.no_grad():
        model.head.weight.mul_(1e4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(torch.randn(4, 3, 32, 32) * 10)
    assert output.logits.dtype == torch.bfloat16 and output.logits.abs().max() > 1e3
    output = output._replace(logits=output.logits.to(dtype), aux_logits=output.aux_logits.to(dtype))
    targets = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    loss = build.build_loss(load_config("synthetic"))(output, targets, torch.tensor([0.3, 0.05, 0.5]))["total"]
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.learnable_parameters() if p.grad is not None)
