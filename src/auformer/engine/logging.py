"""Run observability: progress bars, TensorBoard, metrics.csv/jsonl and the final curves plot.

Only the main process logs (``enabled=False`` on other DDP ranks turns every method
into a no-op), so the trainer calls these unconditionally.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from auformer.files import atomic_path, atomic_write_text

# Columns of metrics.csv / keys of each metrics.jsonl line (one per epoch).
EPOCH_FIELDS = ("epoch", "train_loss", "lr", "images_per_s", "eval_split", "eval_mean_f1", "seconds")


class RunLogger:
    """Per-epoch history in ``metrics.csv`` + ``metrics.jsonl``, TensorBoard events in ``tensorboard/``."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, resume_epoch: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.history = self._read_history() if resume_epoch is not None else []
        # Keep the epochs the resume state has completed (1-based "epoch" <= completed count): a run
        # killed after logging an epoch but before saving its state repeats that epoch.
        self.history = [row for row in self.history if resume_epoch is None or row["epoch"] <= resume_epoch]
        self._rewrite_history()
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def progress(self, iterable: Iterable, total: int, desc: str) -> tqdm:
        """A tqdm bar on a terminal (hidden on non-main ranks); the trainer sets loss and images/s as postfix.

        Not on a terminal (a log file, CI) there is no bar: the trainer's one line per epoch says it all.
        """
        return tqdm(
            iterable, total=total, desc=desc, disable=not (self.enabled and interactive()), dynamic_ncols=True, leave=False
        )

    def step(self, global_step: int, loss: float, lr: float) -> None:
        """Per-optimiser-step scalars for TensorBoard."""
        if self.enabled:
            self.writer.add_scalar("train/loss", loss, global_step)
            self.writer.add_scalar("train/lr", lr, global_step)

    def epoch(self, record: dict[str, Any], per_au_f1: dict[str, float] | None = None) -> None:
        """Append one epoch's record (keys of ``EPOCH_FIELDS``) to csv/jsonl and TensorBoard."""
        if not self.enabled:
            return
        row = {key: record.get(key) for key in EPOCH_FIELDS}
        self.history.append(row)
        self._rewrite_history()
        epoch = row["epoch"]
        self.writer.add_scalar("epoch/train_loss", row["train_loss"], epoch)
        if row["eval_mean_f1"] is not None:
            self.writer.add_scalar(f"{row['eval_split']}/mean_f1", row["eval_mean_f1"], epoch)
        for au, f1 in (per_au_f1 or {}).items():
            self.writer.add_scalar(f"{row['eval_split']}/f1_{au}", f1, epoch)
        self.writer.flush()

    def close(self) -> None:
        """Flush TensorBoard and draw ``curves.png``."""
        if not self.enabled:
            return
        self.writer.close()
        plot_curves(self.history, self.run_dir / "curves.png")

    def _read_history(self) -> list[dict[str, Any]]:
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def _rewrite_history(self) -> None:
        """Rewrite both history files whole (a few dozen lines), so they always agree."""
        atomic_write_text(self.run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in self.history))
        with atomic_path(self.run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=EPOCH_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)


def interactive() -> bool:
    """True when stderr (where tqdm draws) is a terminal: progress bars are for people watching."""
    return sys.stderr.isatty()


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> None:
    """Training loss and evaluation mean F1 per epoch, side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    evaluated = [row for row in history if row["eval_mean_f1"] is not None]
    fig, (ax_loss, ax_f1) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    split = evaluated[0]["eval_split"] if evaluated else "eval"
    ax_f1.plot([row["epoch"] for row in evaluated], [row["eval_mean_f1"] for row in evaluated], marker="o", color="C1")
    ax_f1.set(xlabel="epoch", ylabel=f"{split} mean F1", title="Mean F1", ylim=(0, 1))
    for ax in (ax_loss, ax_f1):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
