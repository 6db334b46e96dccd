"""The training recipe, `Trainer`: ``setup()`` builds data, model, optimiser in dependency order,
``train()`` runs the epochs, ``evaluate()`` scores a split (torchtune-recipe style).

Resume is exact: the sampler order depends on (seed, epoch) only, the DataLoader has
its own seeded generator, and ``train_state.pt`` holds the RNG states after the last
optimiser step, so a resumed run skips the batches it already saw and continues with
the same random numbers (with ``data.num_workers: 0``; worker processes draw their
own augmentation randomness).
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from auformer.aus import au_columns
from auformer.config import Config, save_config
from auformer.data import build_transform, occurrence_rate
from auformer.engine import checkpointing, distributed
from auformer.engine.build import build_loss, build_splits, check_backbone_weights, load_source, make_dataset, model_from_config
from auformer.engine.evaluation import evaluate_model
from auformer.engine.logging import RunLogger
from auformer.engine.outputs import main_score, metrics_json, report_skipped, results_text, skipped_text, write_results
from auformer.engine.schedule import micro_batch_size, micro_per_epoch, plan_run
from auformer.errors import AUFormerError
from auformer.metrics import search_thresholds
from auformer.model.backbone import backbone_geometry
from auformer.model.checkpoint import load_adapter_weights, read_checkpoint_meta, save_checkpoint
from auformer.model.heads import has_intensity


class Trainer:
    """One training run of ``config`` into ``run_dir`` (``resume=True`` continues a killed one)."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, verbose: bool = True) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.verbose = verbose

    def setup(self) -> None:
        cfg, data = self.config, self.config.data
        if not self.resume and (self.run_dir / checkpointing.TRAIN_STATE).exists():
            raise AUFormerError(
                f"{self.run_dir} already holds a run: continue it with --resume {self.run_dir} or pick another --out"
            )
        backbone_geometry(cfg.model.backbone, data.img_size, cfg.model.backbone_kwargs)  # before weights and data, as --dry-run
        self.dist = distributed.setup(cfg.train.device)
        check_backbone_weights(cfg, verbose=self.verbose and self.dist.is_main)
        if cfg.train.amp == "fp16" and self.dist.device.type != "cuda":
            raise AUFormerError("config train.amp: fp16 needs a CUDA device; use bf16 or none on CPU")
        self.micro_batch = micro_batch_size(cfg.train, self.dist.world_size)

        source = load_source(cfg)
        target = load_source(cfg, data.target_root) if data.target_root else None
        self.splits = build_splits(cfg, source, target)
        self.skipped = report_skipped(self.run_dir, source.skipped + (target.skipped if target else []), self.dist.is_main)
        self.aus = list(self.splits.train.aus)
        if target is not None:  # cross-domain: name what is scored (the AUs both datasets annotate)
            self._print(f"cross-domain: scoring the AUs of both source and target: {', '.join(au_columns(self.aus))}")
        train_intensity = self.splits.train.intensity
        if has_intensity(cfg.model.task) and (train_intensity is None or not (train_intensity >= 0).any()):
            raise AUFormerError(
                f"config model.task: {cfg.model.task!r} needs intensity annotations, and the training split "
                "has none (manifest.csv AU12_int columns, see docs/intensity.md)"
            )
        rate = occurrence_rate(self.splits.train.labels)  # (N,)
        self.rate = torch.from_numpy(rate).to(self.dist.device)

        torch.manual_seed(cfg.train.seed)  # identical model init on every rank
        self.model = self._build_model().to(self.dist.device)
        mean, std = self.model.data_config["mean"], self.model.data_config["std"]
        train_tf = build_transform(True, data.img_size, mean, std, data.resize_size, data.color_jitter, data.hflip)
        test_tf = build_transform(False, data.img_size, mean, std, data.resize_size)
        intensity = has_intensity(cfg.model.task)
        self.train_set = make_dataset(source, self.splits.train, train_tf, intensity)
        self.test_set = make_dataset(target or source, self.splits.test, test_tf, intensity)
        self.val_set = make_dataset(source, self.splits.val, test_tf, intensity) if self.splits.val is not None else None
        self.sampler = distributed.sampler(self.train_set, self.dist, shuffle=True, seed=cfg.train.seed)

        # fused: one kernel over all parameter tensors (24 x N experts make thousands of small ones; the
        # default per-tensor loop on CPU cost a third of the synthetic model's step). Against foreach, the
        # other multi-tensor form: the same losses and F1, a step about 3x faster (docs/performance.md). It once
        # seemed to stop the tiny model learning: evaluation read stale fused expert weights (issue 17, fixed).
        self.optimizer = torch.optim.AdamW(
            self._param_groups(), betas=tuple(cfg.train.betas), weight_decay=cfg.train.weight_decay, fused=True
        )
        self.micro_per_epoch = micro_per_epoch(len(self.splits.train), self.micro_batch, self.dist.world_size)
        self.schedule = plan_run(
            cfg.train, len(self.splits.train), self.splits.full_train_size, self.micro_batch, self.dist.world_size
        )
        self.scheduler = self._build_scheduler()
        self.loss_fn = build_loss(cfg)
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=cfg.train.amp == "fp16")
        self.network = distributed.wrap(self.model, self.dist)  # self.model stays the plain module that gets saved
        if cfg.train.compile:
            self.network = torch.compile(self.network)  # compile after DDP wrapping, as PyTorch recommends

        self.epoch, self.micro_done, self.global_step, self.best_f1 = 0, 0, 0, -1.0
        self.loss_sum, self.loss_count = 0.0, 0  # running training loss of the current epoch
        state = checkpointing.load_train_state(self.run_dir) if self.resume else None
        if state is not None:
            self._load_state(state)  # checked to be this run's before any of it is used
        else:
            seed = cfg.train.seed + self.dist.rank  # different augmentation/dropout per rank
            torch.manual_seed(seed)
            np.random.seed(seed)
            random.seed(seed)
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main, resume_epoch=self.epoch if state else None)
        if self.dist.is_main:
            save_config(cfg, self.run_dir / "config.yaml")

    def _build_model(self) -> torch.nn.Module:
        return model_from_config(self.config, self.aus, self.config.model.backbone_weights)

    def _param_groups(self) -> list[dict[str, Any]]:
        """Experts at ``train.lr``, the linear heads (``head``, ``aux_head``, ``intensity``) at ``train.head_lr``.

        A linear head on frozen features often wants a larger step than the adapters.
        """
        train = self.config.train
        groups = {False: [], True: []}  # is a head -> parameters
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                groups[name.startswith(("head.", "aux_head.", "intensity."))].append(param)
        return [{"params": groups[False], "lr": train.lr}, {"params": groups[True], "lr": train.head_lr or train.lr}]

    def _build_scheduler(self) -> Any:
        """Per-step cosine decay after a linear warm-up (timm), stepped after every optimiser step."""
        from timm.scheduler import CosineLRScheduler

        train, total, warmup = self.config.train, self.schedule.total_steps, self.schedule.warmup_steps
        return CosineLRScheduler(
            self.optimizer, t_initial=total - warmup, lr_min=train.min_lr, warmup_t=warmup,
            warmup_lr_init=train.min_lr, warmup_prefix=True, t_in_epochs=False,
        )  # fmt: skip

    # ------------------------------------------------------------ state

    def _state(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """What ``train_state.pt`` holds after the current optimiser step (``rngs``: every rank's RNG states)."""
        return {
            "model": self.model.learnable_state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rngs,
            "epoch": self.epoch,
            "micro_done": self.micro_done,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "global_step": self.global_step,
            "best_f1": self.best_f1,
            "world_size": self.dist.world_size,
            "seed": self.config.train.seed,
            "config": self.config.to_dict(),  # whose run this is: --resume refuses another run's state
            "aus": self.aus,
        }

    def _save_state(self) -> None:
        """Resume point after the current optimiser step: written atomically by rank 0."""
        rngs = distributed.gather_objects(checkpointing.rng_state(), self.dist)
        # each rank's running loss sum is its own, and the epoch's loss is their mean: a resumed rank starts from it
        loss_sum = distributed.mean_across(self.loss_sum, self.dist)
        if self.dist.is_main:
            checkpointing.save_train_state(self.run_dir, {**self._state(rngs), "loss_sum": loss_sum})
            save_checkpoint(self.model, self.run_dir / "last", extra=self._extra())
        distributed.barrier(self.dist)

    def _load_state(self, state: dict[str, Any]) -> None:
        own = self._state([checkpointing.rng_state()] * self.dist.world_size)
        path = self.run_dir / checkpointing.TRAIN_STATE
        checkpointing.check_train_state(state, path, own, self.optimizer, self.aus)  # this run's, before any use
        self.model.load_state_dict(state["model"], strict=False)  # keys and shapes checked
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.micro_done = state["epoch"], state["micro_done"]
        self.loss_sum, self.loss_count = state["loss_sum"], state["loss_count"]
        self.global_step, self.best_f1 = state["global_step"], state["best_f1"]
        checkpointing.set_rng_state(state["rng"][self.dist.rank])
        self._print(f"resuming {self.run_dir} at epoch {self.epoch + 1}, batch {self.micro_done} (step {self.global_step})")

    def _extra(self) -> dict[str, Any]:
        """Stored in the checkpoint JSON: where the weights came from, and the test-time resize
        that detection must repeat (it can differ from the default 256/224 ratio)."""
        data = self.config.data
        return {
            "dataset": data.dataset, "preset": self.config.preset, "fold": data.fold,
            "train_samples": len(self.splits.train), "epochs_completed": self.epoch, "steps_completed": self.global_step,
            "img_size": data.img_size, "resize_size": data.resize_size, "backbone_weights": self.config.model.backbone_weights,
        }  # fmt: skip

    # ------------------------------------------------------------ loops

    def train(self) -> dict[str, Any]:
        """Run the remaining epochs, then score the test split; returns its metrics (main process writes them)."""
        schedule = self.schedule
        test_metrics = None
        data, info = self.config.data, self.dist
        self._print(
            f"training on {info.device}" + (f" x {info.world_size} processes" if info.world_size > 1 else "")
            + f": {data.root or 'generated synthetic faces'}, test fold {data.fold}, "
            f"{len(self.splits.train)} training / {len(self.splits.test)} test images"
        )  # fmt: skip
        while self.epoch < schedule.epochs:
            loss, images_per_s, seconds = self._train_epoch()
            evaluate_now = schedule.evaluates_after(self.epoch)
            split_name, eval_metrics = None, None
            if evaluate_now:
                split_name = "val" if self.val_set is not None else "test"
                eval_metrics, predictions = self.evaluate(self.val_set or self.test_set)
                if split_name == "test":
                    test_metrics, test_predictions = eval_metrics, predictions
            has_f1 = eval_metrics is not None and "mean_f1" in eval_metrics
            record = {
                "epoch": self.epoch + 1, "train_loss": loss, "lr": self.optimizer.param_groups[0]["lr"],
                "images_per_s": images_per_s, "eval_split": split_name, "seconds": seconds,
                "eval_mean_f1": eval_metrics["mean_f1"] if has_f1 else None,
            }  # fmt: skip
            self.logger.epoch(record, {au: v["f1"] for au, v in eval_metrics["per_au"].items()} if has_f1 else None)
            f1_text = f", {split_name} mean F1 {eval_metrics['mean_f1']:.3f}" if has_f1 else ""
            if eval_metrics is not None and "intensity" in eval_metrics:
                f1_text += f", {split_name} mean ICC {eval_metrics['intensity']['mean_icc']:.3f}"
            if evaluate_now or not schedule.by_steps:  # step budgets on tiny sets run thousands of short epochs
                self._print(
                    f"epoch {self.epoch + 1}/{schedule.epochs} (step {self.global_step}/{schedule.total_steps}): "
                    f"loss {loss:.4f}, {images_per_s:.0f} images/s{f1_text}"
                )
            improved = split_name == "val" and main_score(eval_metrics) > self.best_f1
            if improved:
                self.best_f1 = main_score(eval_metrics)
                if self.dist.is_main:
                    save_checkpoint(self.model, self.run_dir / "best", extra=self._extra())
            self.epoch, self.micro_done, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0
            self._save_state()

        if self.val_set is not None:  # score the best-on-validation weights on the test split
            load_adapter_weights(self.model, self.run_dir / "best")
            test_metrics, test_predictions = self.evaluate(self.test_set, self._search_thresholds())
        elif self.dist.is_main:  # no validation split: the final weights are the ones kept
            save_checkpoint(self.model, self.run_dir / "best", extra=self._extra())
        if test_metrics is None:  # resumed after the last epoch had finished
            test_metrics, test_predictions = self.evaluate(self.test_set)
        if self.dist.is_main:
            write_results(self.run_dir, test_metrics, self.splits.test, test_predictions, self.config.model.backbone_weights)
        self.logger.close()
        self._print(f"{results_text(test_metrics)}\noutputs written to {self.run_dir}")
        if self.skipped:
            self._print(skipped_text(self.run_dir, self.skipped))
        return metrics_json(test_metrics, self.config.model.backbone_weights)

    def _train_epoch(self) -> tuple[float, float, float]:
        """One epoch from ``self.micro_done`` on; returns (mean loss, images/s, seconds)."""
        cfg = self.config.train
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)[self.micro_done * self.micro_batch :]  # skip the batches seen before a resume
        generator = torch.Generator().manual_seed(cfg.seed + self.epoch)  # keeps the global RNG untouched
        loader = DataLoader(
            self.train_set, batch_size=self.micro_batch, sampler=order, num_workers=self.config.data.num_workers,
            generator=generator, pin_memory=self.dist.device.type == "cuda",
        )  # fmt: skip
        self.network.train()
        start, seen = time.perf_counter(), 0
        bar = self.logger.progress(loader, total=len(loader), desc=f"epoch {self.epoch + 1}/{self.schedule.epochs}")
        for images, targets, *intensity in bar:  # intensity: [(B, N)] for intensity models, else []
            images, targets = images.to(self.dist.device, non_blocking=True), targets.to(self.dist.device, non_blocking=True)
            intensity = intensity[0].to(self.dist.device, non_blocking=True) if intensity else None
            with torch.autocast(self.dist.device.type, dtype=self._amp_dtype(), enabled=cfg.amp != "none"):
                output = self.network(images)
            loss = self.loss_fn(output, targets, self.rate, intensity)["total"]
            value = loss.item()
            self._stop_if_not_finite(value)
            self.scaler.scale(loss / cfg.grad_accum).backward()
            self.micro_done += 1
            seen += len(images) * self.dist.world_size
            self.loss_sum, self.loss_count = self.loss_sum + value, self.loss_count + 1
            if self.micro_done % cfg.grad_accum == 0 or self.micro_done == self.micro_per_epoch:
                self._optimizer_step(value)
                bar.set_postfix(loss=f"{value:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
                if self.global_step == self.schedule.total_steps:
                    break  # the step budget ends inside this epoch
                if self.global_step % cfg.checkpoint_every == 0 and self.micro_done < self.micro_per_epoch:
                    self._save_state()
        seconds = time.perf_counter() - start
        mean_loss = distributed.mean_across(self.loss_sum / max(self.loss_count, 1), self.dist)
        return mean_loss, seen / max(seconds, 1e-9), seconds

    def _stop_if_not_finite(self, loss: float) -> None:
        """Stop before the backward pass when any rank's loss is NaN or infinite: no NaN reaches the
        weights or a checkpoint, and every rank raises the same error in the same step (under DDP a
        rank that stopped alone would leave the others waiting in the gradient all-reduce)."""
        losses = distributed.values_across(loss, self.dist)  # (world_size,)
        bad = next((rank for rank, value in enumerate(losses) if not math.isfinite(value)), None)
        if bad is None:
            return
        where = f" on rank {bad} of {self.dist.world_size}" if self.dist.enabled else ""
        raise AUFormerError(
            f"{self.run_dir}: training loss is {losses[bad]} at step {self.global_step + 1} (epoch {self.epoch + 1}, "
            f"batch {self.micro_done + 1}){where}; stopped. {checkpointing.TRAIN_STATE} and last.safetensors hold the "
            "last checkpoint before it (try a lower train.lr or train.grad_clip)"
        )

    def _optimizer_step(self, loss: float) -> None:
        cfg = self.config.train
        if cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.learnable_parameters(), cfg.grad_clip, foreach=True)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.scheduler.step_update(self.global_step)
        self.logger.step(self.global_step, loss, self.optimizer.param_groups[0]["lr"])

    def _amp_dtype(self) -> torch.dtype:
        return torch.float16 if self.config.train.amp == "fp16" else torch.bfloat16

    @torch.no_grad()
    def evaluate(self, dataset: Dataset, thresholds: list[float] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Score ``dataset`` (sharded over ranks, gathered): (metrics, predictions), see `evaluate_model`."""
        return evaluate_model(self.network, dataset, self.aus, self.dist, self.config, thresholds)

    def _search_thresholds(self) -> list[float] | None:
        """``train.threshold_search=val``: one threshold per AU from the best weights' predictions on the
        validation split (the test split is never read for it), added to the best checkpoint's JSON."""
        if self.config.train.threshold_search != "val":
            return None
        _, predictions = self.evaluate(self.val_set)
        thresholds = search_thresholds(predictions["probs"], self.val_set.labels.numpy(), self.config.train.threshold)
        if self.dist.is_main:
            extra = read_checkpoint_meta(self.run_dir / "best")["extra"]  # the best epoch's record, kept
            extra["thresholds"] = dict(zip(au_columns(self.aus), thresholds.tolist()))
            extra["thresholds_from"] = f"validation split (data.val_fold={self.config.data.val_fold})"
            save_checkpoint(self.model, self.run_dir / "best", extra=extra)
        return thresholds.tolist()

    def _print(self, text: str) -> None:
        if self.dist.is_main and self.verbose:
            print(text, flush=True)
