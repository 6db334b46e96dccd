"""Per-AU heads beside the occurrence head: AU intensity (0-5) on the same features.

``model.task`` picks the heads a model has:

- ``occurrence``: the paper's model, N logits (main head) + N per-expert logits (aux);
- ``intensity``: N intensities on the FACS 0-5 scale (main) + N per-expert intensities (aux);
- ``both``: all four, one frozen backbone and one set of experts.

An intensity is a regression ``5 * sigmoid(w . x + b)``: bounded to the scale, so it
never predicts -1 or 7, and its loss (``losses.intensity_loss``) is a masked MSE on the
0-1 scaled value (docs/intensity.md says why MSE and not an ordinal loss).
"""

from __future__ import annotations

import torch
from torch import nn

from auformer.aus import INTENSITY_MAX

TASKS = ("occurrence", "intensity", "both")


def has_occurrence(task: str) -> bool:
    return task in ("occurrence", "both")


def has_intensity(task: str) -> bool:
    return task in ("intensity", "both")


def per_expert(expert_features: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """N per-AU ``Linear(D, 1)`` projectors stored as one ``(N, D)`` weight, row n on expert n's CLS.

    expert_features (B, E, D) with E = N (or E = 1 without collaboration, broadcast) -> (B, N).
    """
    return (expert_features * linear.weight).sum(-1) + linear.bias


class IntensityHeads(nn.Module):
    """Main intensity head on the final CLS features and, optionally, per-expert aux intensity heads."""

    def __init__(self, dim: int, num_aus: int, aux_head: bool = True) -> None:
        super().__init__()
        self.head = nn.Linear(dim, num_aus)
        self.aux_head = nn.Linear(dim, num_aus) if aux_head else None

    def forward(self, features: torch.Tensor, expert_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """features (B, D), expert_features (B, E, D) -> intensities (B, N) and aux intensities (B, N) or None, in [0, 5]."""
        intensity = INTENSITY_MAX * torch.sigmoid(self.head(features))
        aux = None if self.aux_head is None else INTENSITY_MAX * torch.sigmoid(per_expert(expert_features, self.aux_head))
        return intensity, aux
