"""DistributedDataParallel on CPU: 2 gloo processes (torchrun) give the single-process results."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from auformer.engine import distributed
from auformer.errors import AUFormerError
from test_train import write_tiny_preset

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _launch(args: list[str], torchrun: list[str] | None = None) -> subprocess.Popen:
    """``auformer train ARGS`` in one process, or under ``torchrun`` with its arguments."""
    launcher = [sys.executable, "-m", "torch.distributed.run", *torchrun] if torchrun is not None else [sys.executable]
    return subprocess.Popen([*launcher, "-m", "auformer", "train", *args],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _two_nodes(port: int, node: int) -> list[str]:
    """torchrun's arguments for node ``node`` of two on loopback, one process each; node 0 hosts the
    c10d rendezvous store (``is_host``), as the node named by ``--rdzv-endpoint`` does on a cluster."""
    return ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-id", "two-nodes",
            "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-conf", f"is_host={int(node == 0)}",
            "--node-rank", str(node)]  # fmt: skip


@pytest.fixture(scope="module")
def ddp_preset(tmp_path_factory) -> str:
    """The tiny preset, 2 epochs of 10 steps, a resume point every 3 steps, per-sample WDI (see `three_runs`)."""
    root = tmp_path_factory.mktemp("preset")
    return write_tiny_preset(root / "tiny.yaml", train={"epochs": 2, "checkpoint_every": 3}, loss={"wdi_reduction": "sample"})


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, ddp_preset) -> dict[str, tuple[Path, str]]:
    """One tiny training run three ways, launched at once: one process; one node of 2 gloo processes;
    two "nodes" on loopback (two torchrun launches joined by c10d rendezvous, 1 process each).

    No augmentation and no dropout (TINY): the only difference left is where the batch is split. The
    batch-form WDI is a dice over each process's local batch (docs/losses.md), so the equivalence is
    checked with the per-sample form, whose batch mean does not depend on the split.
    """
    root, port = tmp_path_factory.mktemp("ddp"), _free_port()
    args = ["--preset", ddp_preset, "--out"]
    launches = {
        "single": [_launch([*args, str(root / "single")])],
        "ddp": [_launch([*args, str(root / "ddp")], ["--standalone", "--nproc-per-node", "2"])],
        "two_nodes": [_launch([*args, str(root / "two_nodes")], _two_nodes(port, node)) for node in (0, 1)],
    }
    runs = {}
    for name, processes in launches.items():
        outputs = [process.communicate(timeout=400) for process in processes]
        for process, (_, err) in zip(processes, outputs):
            assert process.returncode == 0, f"{name}: {err[-3000:]}"
        runs[name] = (root / name, outputs[0][0])
    return runs


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(three_runs):
    (single, _), (ddp, stdout) = three_runs["single"], three_runs["ddp"]
    assert stdout.count("outputs written to") == 1  # only rank 0 prints and writes
    expected, got = (json.loads((run / "metrics.json").read_text()) for run in (single, ddp))
    assert got["mean_f1"] == pytest.approx(expected["mean_f1"], abs=0.02)
    a = pd.read_csv(single / "predictions.csv")
    b = pd.read_csv(ddp / "predictions.csv")
    assert b["image"].tolist() == a["image"].tolist()  # every test image once, in order, despite sharding
    np.testing.assert_allclose(b.filter(like="_prob").to_numpy(), a.filter(like="_prob").to_numpy(), atol=2e-3)
    history_a, history_b = pd.read_csv(single / "metrics.csv"), pd.read_csv(ddp / "metrics.csv")
    np.testing.assert_allclose(history_b["train_loss"], history_a["train_loss"], rtol=1e-3)


# Run by torchrun in each process: the loss of rank 1 turns NaN at its 3rd batch (a seam patched in the
# test's own process, no production hook), then the CLI runs as `auformer train ARGS`.
_NAN_ON_RANK_1 = """
import os, sys
from auformer.cli import main
from auformer.engine import trainer

build_loss = trainer.build_loss

def nan_on_rank_1(config):
    loss, calls = build_loss(config), []
    def wrapped(*args, **kwargs):
        terms = loss(*args, **kwargs)
        calls.append(1)
        if os.environ["RANK"] == "1" and len(calls) == 3:
            terms = {**terms, "total": terms["total"] * float("nan")}
        return terms
    return wrapped

trainer.build_loss = nan_on_rank_1
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_nan_on_one_rank_stops_every_rank_with_the_same_message(tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(_NAN_ON_RANK_1)
    preset = write_tiny_preset(tmp_path / "tiny.yaml", train={"epochs": 1, "checkpoint_every": 100})
    logs = tmp_path / "logs"  # each rank's stderr in its own file (a shared pipe interleaves their lines)
    # torchrun's agent terminates the other workers as soon as it sees one exit with an error; polling every
    # 0.1 s (its default) it can kill a rank that is still exiting on a loaded machine. Every rank stops in the
    # same step, so polling every 5 s lets each one end by itself, as the test means to check.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                "--log-dir", str(logs), "--redirects", "2", "--monitor-interval", "5"]  # fmt: skip
    run = subprocess.run([*torchrun, str(script), "train", "--preset", preset, "--out", str(tmp_path / "run")],
                         env=ENV, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode != 0
    stderr = {path.parent.name: path.read_text() for path in logs.rglob("stderr.log")}
    assert sorted(stderr) == ["0", "1"], run.stderr[-3000:]
    errors = {rank: [line for line in text.splitlines() if line.startswith("error: ")] for rank, text in stderr.items()}
    assert errors["0"] == errors["1"] and len(errors["0"]) == 1, stderr  # each rank: the same one line
    assert "training loss is nan at step 3 (epoch 1, batch 3) on rank 1 of 2; stopped" in errors["0"][0]
    assert not any("Traceback" in text for text in stderr.values()), stderr  # no rank crashed in a collective
    assert run.stderr.count("exitcode  : 2") == 2  # both ranks ended with the CLI's exit 2; none was killed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_match_one_node_with_two_processes(three_runs):
    one_node, two_nodes = three_runs["ddp"][0], three_runs["two_nodes"][0]
    expected, got = (json.loads((run / "metrics.json").read_text()) for run in (one_node, two_nodes))
    print(f"one node, 2 processes: mean_f1 {expected['mean_f1']:.4f}; two nodes, 1 process each: {got['mean_f1']:.4f}")
    assert got["mean_f1"] == pytest.approx(expected["mean_f1"], abs=1e-4)
    np.testing.assert_allclose(
        pd.read_csv(two_nodes / "metrics.csv")["train_loss"], pd.read_csv(one_node / "metrics.csv")["train_loss"], rtol=1e-4
    )
    a, b = pd.read_csv(one_node / "predictions.csv"), pd.read_csv(two_nodes / "predictions.csv")
    assert b["image"].tolist() == a["image"].tolist()
    np.testing.assert_allclose(b.filter(like="_prob").to_numpy(), a.filter(like="_prob").to_numpy(), atol=1e-4)


def _kill_node(agent: subprocess.Popen) -> None:
    """SIGKILL a torchrun agent and its workers at once, as a node that loses power (torchrun starts each
    worker in its own session, so killing the agent's process group would leave the workers running)."""
    pids = [agent.pid]
    for pid in pids:  # grows as it goes: each process's children, depth first
        pids += [int(child) for task in Path(f"/proc/{pid}/task").iterdir() for child in (task / "children").read_text().split()]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    agent.wait()


def _wait_for_state(nodes: list[subprocess.Popen], state_file: Path, timeout: float = 300) -> None:
    """Poll until train_state.pt appears (the first resume point, step 3 of 20): the kill then lands with most
    of the run still to go, however loaded the machine (waiting for a later point raced the run's end)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert all(node.poll() is None for node in nodes), f"a node ended before the kill: {nodes[0].communicate()[1][-3000:]}"
        if state_file.is_file():
            return
        time.sleep(0.02)
    raise AssertionError("no resume point appeared")


@pytest.mark.slow
def test_two_nodes_resume_after_one_node_is_killed(three_runs, ddp_preset, tmp_path):
    """Node 1 dies mid-epoch: node 0 fails within seconds (its next collective finds the peer gone) and the
    folder keeps a loadable resume point; both nodes launched again with ``--resume OUT`` end the run with
    the uninterrupted two-node run's metrics, losses and probabilities (the `three_runs` fixture's)."""
    out, port, started = tmp_path / "run", _free_port(), time.monotonic()
    nodes = [_launch(["--preset", ddp_preset, "--out", str(out)], _two_nodes(port, node)) for node in (0, 1)]
    _wait_for_state(nodes, out / "train_state.pt")
    _kill_node(nodes[1])
    killed = time.monotonic()
    _, err = nodes[0].communicate(timeout=120)
    assert nodes[0].returncode != 0, "node 0 went on without its peer"
    assert "Connection reset by peer" in err or "Connection closed by peer" in err, err[-3000:]
    failed_after = time.monotonic() - killed
    state = torch.load(out / "train_state.pt", weights_only=True)  # rank 0 wrote it atomically: whole, loadable
    assert 0 < state["global_step"] < 20 and state["world_size"] == 2  # a point inside the run
    assert not (out / "metrics.json").exists() and not list(out.glob(".*.tmp*"))  # no result, no half-written file
    where = f"epoch {state['epoch'] + 1}, batch {state['micro_done']} (step {state['global_step']})"
    print(f"\nkilled node 1 at {where}, {killed - started:.0f} s after the launch; node 0 failed {failed_after:.1f} s later")

    port = _free_port()
    nodes = [_launch(["--resume", str(out)], _two_nodes(port, node)) for node in (0, 1)]
    outputs = [node.communicate(timeout=400) for node in nodes]
    for node, (_, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    stdout = "".join(text for text, _ in outputs)
    assert f"at {where}" in stdout  # resumed where it stopped
    expected, got = (json.loads((run / "metrics.json").read_text()) for run in (three_runs["two_nodes"][0], out))
    history_a, history_b = pd.read_csv(three_runs["two_nodes"][0] / "metrics.csv"), pd.read_csv(out / "metrics.csv")
    print(f"resumed: mean_f1 {got['mean_f1']:.6f}, last train_loss {history_b['train_loss'].iloc[-1]:.6f}; uninterrupted: "
          f"{expected['mean_f1']:.6f}, {history_a['train_loss'].iloc[-1]:.6f}; {time.monotonic() - started:.0f} s in all")  # fmt: skip
    assert got["mean_f1"] == pytest.approx(expected["mean_f1"], abs=1e-6)
    assert history_b["epoch"].tolist() == [1, 2]
    np.testing.assert_allclose(history_b["train_loss"], history_a["train_loss"], rtol=1e-6)
    a, b = (pd.read_csv(run / "predictions.csv").filter(like="_prob").to_numpy() for run in (three_runs["two_nodes"][0], out))
    np.testing.assert_allclose(b, a, atol=1e-6)


def test_collective_timeout_is_a_setting(monkeypatch):
    monkeypatch.delenv(distributed.TIMEOUT_ENV, raising=False)
    assert distributed.collective_timeout() is None  # torch's default
    monkeypatch.setenv(distributed.TIMEOUT_ENV, "90")
    assert distributed.collective_timeout() == timedelta(seconds=90)
    for bad in ("0", "-5", "ten", "inf", "nan"):
        monkeypatch.setenv(distributed.TIMEOUT_ENV, bad)
        with pytest.raises(AUFormerError, match=f"AUFORMER_DIST_TIMEOUT={bad!r}: expected a positive number of seconds"):
            distributed.collective_timeout()


# Run by torchrun in each of 2 processes: rank 1 hangs (as a node cut off the network would) while rank 0 waits
# for it in a collective.
_HANG_ON_RANK_1 = """
import os, time
from auformer.engine import distributed

info = distributed.setup("cpu")
if info.rank == 1:
    time.sleep(600)
distributed.barrier(info)
"""


@pytest.mark.slow
def test_a_hung_peer_fails_the_others_after_the_timeout(tmp_path):
    script = tmp_path / "hang_on_rank_1.py"
    script.write_text(_HANG_ON_RANK_1)
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)],
                         env={**ENV, distributed.TIMEOUT_ENV: "5"}, capture_output=True, text=True, timeout=300)  # fmt: skip
    seconds = time.monotonic() - started
    assert run.returncode != 0 and "Timed out" in run.stderr, run.stderr[-3000:]
    assert seconds < 120, f"rank 0 waited {seconds:.0f} s for a 5 s timeout"  # not 30 minutes, torch's default
