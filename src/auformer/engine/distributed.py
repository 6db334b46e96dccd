"""Every ``if distributed`` of the project lives here (nanoGPT-style DDP).

``torchrun --nproc-per-node K -m auformer train ...`` sets ``RANK``, ``WORLD_SIZE``
and ``LOCAL_RANK``; without them everything below degrades to a single process
(rank 0 of 1), so the trainer has one code path.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from auformer.errors import AUFormerError


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global process index
    world_size: int  # number of processes
    device: torch.device  # this process's device

    @property
    def is_main(self) -> bool:
        """Only the main process prints, logs and writes files."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


TIMEOUT_ENV = "AUFORMER_DIST_TIMEOUT"


def setup(device: str = "auto", timeout: timedelta | None = None) -> DistInfo:
    """Join the torchrun process group if launched by torchrun, and pick this process's device.

    ``device``: ``auto`` (CUDA when available), ``cpu`` or ``cuda``. Backend: NCCL on
    CUDA, gloo on CPU. Calling it again in the same process reuses the group. ``timeout``: how long
    a collective waits for the slowest rank before it fails (`auformer detect` waits for the last rank
    to finish its share); when None, `collective_timeout`. A peer that dies with its sockets closed
    fails the others' next collective at once; one that hangs, or a node cut off the network, fails
    them only after this timeout, which is what ends the run instead of a hang.
    """
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise AUFormerError("config train.device: 'cuda' requested but no CUDA device is available")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo(0, 1, torch.device("cuda" if use_cuda else "cpu"))
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timeout or collective_timeout())
        atexit.register(teardown)  # leave the group cleanly when the command ends
    return DistInfo(dist.get_rank(), world_size, torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"))


def collective_timeout() -> timedelta | None:
    """``AUFORMER_DIST_TIMEOUT`` seconds when set (a positive number), else None: torch's default
    (30 minutes for gloo, 10 for NCCL in torch 2.x). A setting of the cluster, not of the run: it
    changes no result, so it is no config field and a resumed run may use another."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 10**9:
        raise AUFormerError(f"{TIMEOUT_ENV}={text!r}: expected a positive number of seconds, e.g. 600")
    return timedelta(seconds=seconds)


def teardown() -> None:
    """Leave the process group (no-op in a single process or when already left)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def sampler(dataset: Dataset, info: DistInfo, shuffle: bool, seed: int) -> DistributedSampler:
    """This rank's share of ``dataset``; with ``shuffle`` the order depends on (seed, epoch) only.

    Used in single-process runs too (1 replica): the seeded per-epoch permutation is
    what lets a resumed run skip exactly the batches it has already seen.
    """
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=shuffle, seed=seed)


def wrap(model: torch.nn.Module, info: DistInfo) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when several processes run.

    Callers keep the plain model beside the wrapper for saving, so nothing needs unwrapping.
    """
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)


def gather_rows(indices: np.ndarray, rows: np.ndarray, info: DistInfo, total: int) -> np.ndarray:
    """Collect per-rank ``rows`` (n_r, C) at dataset ``indices`` (n_r,) into one (total, C) array.

    DistributedSampler pads the last shard by repeating samples; writing by index
    drops those duplicates. Every rank gets the full array.
    """
    shards = gather_objects((indices, rows), info)
    gathered = np.zeros((total, rows.shape[1]), dtype=rows.dtype)  # (total, C)
    for shard_indices, shard_rows in shards:
        gathered[shard_indices] = shard_rows
    return gathered


def gather_objects(obj: object, info: DistInfo) -> list:
    """One picklable object from every rank, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    objects = [None] * info.world_size
    dist.all_gather_object(objects, obj)
    return objects


def mean_across(value: float, info: DistInfo) -> float:
    """Average a scalar over processes (e.g. the epoch's training loss)."""
    if not info.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(tensor)
    return tensor.item() / info.world_size


def values_across(value: float, info: DistInfo) -> list[float]:
    """Every rank's ``value``, in rank order, on every rank (one small all-reduce; ``[value]`` in one process).

    What lets all ranks take the same decision in the same step: a NaN seen by one rank
    stops every rank at once, where a rank that stopped alone would leave the others
    waiting in the next collective.
    """
    if not info.enabled:
        return [value]
    values = torch.zeros(info.world_size, dtype=torch.float64, device=info.device)  # (world_size,)
    values[info.rank] = value
    dist.all_reduce(values)  # the sum of one-hot rows: each slot keeps its rank's value, NaN and inf included
    return values.tolist()


def barrier(info: DistInfo) -> None:
    """Wait for all processes (e.g. until rank 0 has written a checkpoint)."""
    if info.enabled:
        dist.barrier()
