"""Scoring a model on a dataset: predictions of every sample (sharded over ranks, gathered) and their metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from auformer.aus import au_columns
from auformer.config import Config
from auformer.engine import distributed
from auformer.engine.logging import interactive
from auformer.metrics import au_metrics, intensity_metrics


@torch.no_grad()
def evaluate_model(
    network: torch.nn.Module,
    dataset: Dataset,
    aus: list[int],
    info: distributed.DistInfo,
    config: Config,
    thresholds: Sequence[float] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Predictions for every sample of ``dataset`` (each rank scores its shard) and their metrics.

    Returns (metrics, predictions): ``predictions["probs"]`` (M, N) and the ``au_metrics``
    keys (at ``train.threshold``) for occurrence heads; ``predictions["intensity"]`` (M, N) and
    ``metrics["intensity"] = intensity_metrics(...)`` for intensity heads. Given per-AU
    ``thresholds`` (tuned on a validation split), ``metrics["tuned"]`` scores them too.
    """
    sampler = distributed.sampler(dataset, info, shuffle=False, seed=0)
    indices = np.array(list(sampler))  # (M_rank,) this rank's rows
    loader = DataLoader(
        dataset, batch_size=config.train.batch_size, sampler=indices.tolist(), num_workers=config.data.num_workers
    )
    network.eval()
    chunks: dict[str, list[np.ndarray]] = {"probs": [], "intensity": []}
    for images, *_ in tqdm(
        loader, desc="evaluate", disable=not (info.is_main and interactive()), leave=False, dynamic_ncols=True
    ):
        with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=config.train.amp != "none"):
            output = network(images.to(info.device))
        if output.logits is not None:
            chunks["probs"].append(torch.sigmoid(output.logits.float()).cpu().numpy())  # (B, N)
        if output.intensity is not None:
            chunks["intensity"].append(output.intensity.float().cpu().numpy())  # (B, N)
    predictions = {
        name: distributed.gather_rows(indices, np.concatenate(parts), info, total=len(dataset))  # (M, N)
        for name, parts in chunks.items()
        if parts
    }
    metrics = {}
    if "probs" in predictions:
        metrics = au_metrics(predictions["probs"], dataset.labels.numpy(), aus, threshold=config.train.threshold)
        if thresholds is not None:
            tuned = au_metrics(predictions["probs"], dataset.labels.numpy(), aus, threshold=thresholds)
            metrics["tuned"] = {**tuned, "thresholds": dict(zip(au_columns(aus), map(float, thresholds)))}
    if "intensity" in predictions:
        metrics["intensity"] = intensity_metrics(predictions["intensity"], dataset.intensity.numpy(), aus)
    return metrics, predictions
