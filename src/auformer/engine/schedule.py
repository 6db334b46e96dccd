"""How long a run is, in optimiser steps: length, warm-up and evaluation points.

One pure function of the training config and the number of micro-batches an epoch
has, shared by the trainer and by ``--dry-run`` (which prints it without training).
Length is ``train.epochs`` passes, or ``train.steps`` optimiser steps when given: small
sets (CASME II, data-efficiency subsets) then get a step budget instead of a handful of
epochs' worth of steps, and the last epoch stops at the budget. A subsampled training
list (data efficiency) without ``train.steps`` gets exactly the steps of the full-data
run of the same fold (``train.epochs`` passes over the full list), as is usual for
data-efficiency curves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from auformer.config import TrainConfig
from auformer.errors import AUFormerError

# A warm-up given in epochs takes at most this fraction of the run: one epoch of a large
# set is a sensible warm-up for 20 epochs, not for a 100-step --set train.steps=100 run.
MAX_WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class Schedule:
    steps_per_epoch: int  # optimiser steps in a full epoch
    total_steps: int  # optimiser steps of the whole run
    warmup_steps: int  # linear warm-up steps before the cosine decay
    epochs: int  # epochs started; the last one may stop early at total_steps
    eval_every: int  # evaluate every this many epochs (epoch-length runs)
    eval_every_steps: int | None  # step-length runs: evaluate after the epoch reaching each multiple; None = end only
    by_steps: bool  # whether the length was given in steps

    def evaluates_after(self, epoch: int) -> bool:
        """Whether the run scores its validation/test split after ``epoch`` (0-based); always after the last."""
        if epoch + 1 >= self.epochs:
            return True
        if not self.by_steps:
            return (epoch + 1) % self.eval_every == 0
        if self.eval_every_steps is None:
            return False
        start, end = epoch * self.steps_per_epoch, (epoch + 1) * self.steps_per_epoch
        return end // self.eval_every_steps > start // self.eval_every_steps

    def eval_points(self) -> list[int]:
        """The optimiser steps after which the run evaluates."""
        return [min((e + 1) * self.steps_per_epoch, self.total_steps) for e in range(self.epochs) if self.evaluates_after(e)]


def micro_batch_size(train: TrainConfig, world_size: int) -> int:
    """Samples per process and forward pass: ``train.batch_size`` split over ``world_size`` processes and
    ``train.grad_accum`` accumulation steps; raises when it does not divide evenly."""
    per_step = world_size * train.grad_accum
    if train.batch_size % per_step:
        raise AUFormerError(
            f"config train.batch_size: {train.batch_size} is not divisible by processes x grad_accum = {per_step}"
        )
    return train.batch_size // per_step


def plan_schedule(train: TrainConfig, micro_per_epoch: int) -> Schedule:
    """The schedule of a run whose epoch has ``micro_per_epoch`` micro-batches (per process)."""
    steps_per_epoch = math.ceil(micro_per_epoch / train.grad_accum)
    total = train.steps if train.steps is not None else train.epochs * steps_per_epoch
    if train.warmup_steps is not None:
        warmup = min(train.warmup_steps, total - 1)
    else:
        warmup = min(round(train.warmup_epochs * steps_per_epoch), int(MAX_WARMUP_FRACTION * total))
    return Schedule(
        steps_per_epoch=steps_per_epoch, total_steps=total, warmup_steps=warmup,
        epochs=math.ceil(total / steps_per_epoch), eval_every=train.eval_every,
        eval_every_steps=train.eval_every_steps, by_steps=train.steps is not None,
    )  # fmt: skip


def micro_per_epoch(samples: int, micro_batch: int, world_size: int = 1) -> int:
    """Micro-batches each process runs in an epoch over ``samples``: it sees ``ceil(samples / world_size)``
    of them (the distributed sampler pads) in micro-batches of ``micro_batch``, the last one short."""
    return math.ceil(math.ceil(samples / world_size) / micro_batch)


def plan_run(train: TrainConfig, train_size: int, full_train_size: int, micro_batch: int, world_size: int = 1) -> Schedule:
    """The schedule of a run on ``train_size`` samples, subsampled from ``full_train_size``."""
    if train.steps is None and train_size < full_train_size:  # data efficiency: the full-data run's steps
        full = plan_schedule(train, micro_per_epoch(full_train_size, micro_batch, world_size))
        train = dataclasses.replace(train, steps=full.total_steps, warmup_steps=full.warmup_steps)
    return plan_schedule(train, micro_per_epoch(train_size, micro_batch, world_size))
