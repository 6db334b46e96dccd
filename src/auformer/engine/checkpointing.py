"""The resumable training state of a run folder.

A run folder holds two kinds of checkpoint:

- ``last`` / ``best``: adapter-only model checkpoints (``NAME.safetensors`` +
  ``NAME.json``, written by ``auformer.save_checkpoint``), what users load;
- ``train_state.pt``: everything a killed run needs to continue exactly where it
  stopped: learnable weights, optimiser, scheduler, RNG states, epoch and the number
  of batches already done in that epoch. It is one file written by rename, so a run
  killed at any moment resumes from a consistent state. Only tensors and plain
  Python types go in, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auformer.errors import AUFormerError, one_line
from auformer.files import atomic_path

TRAIN_STATE = "train_state.pt"


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU, and CUDA when present) as tensors/plain types."""
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` saved."""
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(run_dir: str | Path, state: dict[str, Any]) -> None:
    """Write ``train_state.pt`` atomically."""
    with atomic_path(Path(run_dir) / TRAIN_STATE) as tmp:
        torch.save(state, tmp)


def load_train_state(run_dir: str | Path) -> dict[str, Any]:
    """Read ``train_state.pt`` safely (``weights_only=True``)."""
    path = Path(run_dir) / TRAIN_STATE
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (is {run_dir} a run folder of `auformer train`?)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:  # refused code, or not a torch file at all
        raise AUFormerError(f"{path}: refused or unreadable training state ({one_line(error)[:300]})") from None
