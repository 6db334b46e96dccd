"""The resumable training state of a run folder.

A run folder holds two kinds of checkpoint:

- ``last`` / ``best``: adapter-only model checkpoints (``NAME.safetensors`` +
  ``NAME.json``, written by ``auformer.save_checkpoint``), what users load;
- ``train_state.pt``: everything a killed run needs to continue exactly where it
  stopped: learnable weights, optimiser, scheduler, RNG states, epoch and the number
  of batches already done in that epoch. It is one file written by rename, so a run
  killed at any moment resumes from a consistent state. Only tensors and plain
  Python types go in, so it loads with ``torch.load(weights_only=True)``.

A train state is checked before any of it is used (`check_train_state`): it must be this
run's (the same config and AU list, the same number of processes) and have the structure
this run's own state has (every counter, tensor shape and optimiser slot), so another run's
file, or a crafted one, is refused in one line instead of failing deep inside torch.
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
from auformer.model.backbone import describe_mismatch

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


def check_train_state(state: Any, path: Path, own: dict[str, Any], optimizer: torch.optim.Optimizer, aus: list[int]) -> None:
    """Refuse, in one line naming ``path`` and the field, a train state that is not this run's.

    ``own`` is the state this run would save now (`Trainer._state`): ``state`` must have its keys
    and, value by value, its structure (types, list lengths, tensor shapes and dtypes); the
    same ``config`` (the first differing field is named) and AU list; model tensors of the
    model's shapes; optimiser groups and moments of its parameters' sizes. States written before
    the config was recorded are checked on their structure alone.
    """
    if not isinstance(state, dict):
        raise AUFormerError(f"{path}: not a training state (a {type(state).__name__})")
    if state.get("world_size") != own["world_size"] and isinstance(state.get("world_size"), int):
        raise AUFormerError(f"{path}: run was started with {state['world_size']} processes; resume it with the same number")
    recorded = state.get("config")
    if recorded is not None and recorded != own["config"]:
        field = _first_difference(recorded, own["config"])
        raise AUFormerError(f"{path} belongs to another run: {field} (config.yaml of this run)")
    if state.get("aus", aus) != aus:
        raise AUFormerError(f"{path} belongs to another run: AUs {state['aus']} there, {aus} here")
    for key, value in own.items():
        if key in ("config", "aus") or (key in ("model", "optimizer") and key in state):
            continue  # compared above, or below by their own rules
        theirs = state.get(key, _MISSING)
        if key == "rng" and isinstance(theirs, list):  # CUDA states come and go with the machine (set_rng_state)
            theirs = [{k: v for k, v in r.items() if k != "cuda"} if isinstance(r, dict) else r for r in theirs]
            value = [{k: v for k, v in r.items() if k != "cuda"} for r in value]
        problem = _structure(theirs, value)
        if problem:
            raise AUFormerError(f"{path}: {key}{problem}")
    model_state = state["model"]
    if not isinstance(model_state, dict) or not all(isinstance(v, torch.Tensor) for v in model_state.values()):
        raise AUFormerError(f"{path}: model: not a dict of tensors")
    mismatch = describe_mismatch(own["model"], model_state)
    if mismatch:
        raise AUFormerError(f"{path} does not match the model of config.yaml: {mismatch}")
    _check_optimizer(state["optimizer"], optimizer, path)
    if min(state["epoch"], state["micro_done"], state["global_step"], state["loss_count"]) < 0:
        raise AUFormerError(f"{path}: negative epoch, batch or step counters")


_MISSING = object()


def _structure(theirs: Any, ours: Any, where: str = "") -> str | None:
    """Where ``theirs`` differs in structure from ``ours`` (keys, types, lengths, tensor shapes), or None."""
    if theirs is _MISSING:
        return f"{where}: missing"
    if isinstance(ours, torch.Tensor):
        if not isinstance(theirs, torch.Tensor) or theirs.dtype != ours.dtype or theirs.shape != ours.shape:
            return f"{where}: expected a {ours.dtype} tensor of shape {tuple(ours.shape)}"
        return None
    if isinstance(ours, float) and isinstance(theirs, (int, float)) and not isinstance(theirs, bool):
        return None
    if type(theirs) is not type(ours):
        return f"{where}: expected {type(ours).__name__}, got {type(theirs).__name__}"
    if isinstance(ours, dict):
        if set(theirs) != set(ours):
            return f"{where}: keys {sorted(map(str, theirs))[:8]} differ from {sorted(map(str, ours))[:8]}"
        return next((p for k in ours if (p := _structure(theirs[k], ours[k], f"{where}.{k}"))), None)
    if isinstance(ours, (list, tuple)):
        if len(theirs) != len(ours):
            return f"{where}: {len(theirs)} entries, expected {len(ours)}"
        return next((p for i, (a, b) in enumerate(zip(theirs, ours)) if (p := _structure(a, b, f"{where}[{i}]"))), None)
    return None


def _first_difference(theirs: Any, ours: Any, where: str = "") -> str:
    """``train.lr is 0.001 there, 0.003 here`` for the first field where two config dicts differ."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in sorted(set(theirs) | set(ours), key=str):
            if theirs.get(key, _MISSING) != ours.get(key, _MISSING):
                return _first_difference(theirs.get(key), ours.get(key), f"{where}.{key}" if where else str(key))
    text = repr(theirs)
    return f"{where} is {text if len(text) <= 60 else text[:60] + '...'} there, {ours!r} here"


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, path: Path) -> None:
    """The saved optimiser has this optimiser's groups and, per parameter, moments of its shape."""
    ours = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != set(ours) or not isinstance(saved["param_groups"], list):
        raise AUFormerError(f"{path}: optimizer: not an optimiser state of this run")
    sizes = [len(group["params"]) for group in ours["param_groups"]]
    problem = _structure(saved["param_groups"], ours["param_groups"], "param_groups")
    if problem:
        raise AUFormerError(f"{path}: optimizer.{problem} (parameter groups: {sizes})")
    shapes = [p.shape for group in optimizer.param_groups for p in group["params"]]
    for index, slots in saved["state"].items():
        if not (isinstance(index, int) and 0 <= index < len(shapes) and isinstance(slots, dict)):
            raise AUFormerError(f"{path}: optimizer.state: entry {index!r} is not a parameter of this model")
        for name, value in slots.items():
            if not isinstance(value, torch.Tensor) or (value.dim() > 0 and value.shape != shapes[index]):
                raise AUFormerError(f"{path}: optimizer.state[{index}].{name}: not a tensor of shape {tuple(shapes[index])}")
