"""AUFormer losses (SPEC section 2, paper eqs. 6-9) and the baselines they are compared to.

All losses take raw logits ``(B, N)`` and targets ``(B, N)`` in ``{0, 1}`` and return a
scalar: the batch mean of the per-sample loss ``(1/N) sum_i omega_i * l_i``. The exception
is WDI's default batch form, one dice per AU over the whole batch (see ``wdi_loss``).

Masking: ``mask`` (same shape, 1 = known label, 0 = unknown) removes entries. The
loss is the sum of ``omega_i * l[b, i]`` over known entries divided by the number of
known entries. Without unknowns this is exactly the batch mean of the per-sample loss;
with unknowns every known label keeps the same weight and the loss scale does not
shrink with the fraction of unknowns. A batch with no known label gives 0 (with a
graph, so ``backward()`` still works). With ``mask=None`` the mask is
``targets >= 0``, the project's label convention (``-1`` = unknown, NaN also unknown).
Whatever the targets hold at masked entries (-1, 9, NaN) never reaches the value or
the gradient.

Numerics: everything is computed in float32 (or float64 when the logits are float64)
from logits with ``logsigmoid``, so the losses are finite in value and gradient under
fp16/bf16 autocast, at saturated probabilities (p in {0, 1}), below the margin
(p < m) and for gamma < 1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn.functional as F

from auformer.aus import INTENSITY_MAX

# Occurrence rates are clamped to at least this before 1/r: an AU that never occurs in
# the training split gets a large but finite weight instead of inf/NaN.
MIN_OCCURRENCE_RATE = 1e-3
WDI_REDUCTIONS = ("batch", "sample")  # dice per AU over the batch (JAA-Net), or per (sample, AU)
Rates = torch.Tensor | Sequence[float]  # (N,) occurrence rate r_i of each AU in the training split


def au_weights(occurrence_rate: Rates) -> torch.Tensor:
    """Class-imbalance weights ``omega_i = N (1/r_i) / sum_j (1/r_j)`` (paper eq. 6).

    Rare AUs get large weights; the weights sum to N, so a uniform rate gives all ones.
    ``occurrence_rate`` (N,) holds rates in [0, 1]; they are clamped to at least
    ``MIN_OCCURRENCE_RATE`` so a never-seen AU does not produce an infinite weight.
    Returns a float32 tensor (N,) (float64 if the rates are float64).
    """
    rate = _as_rate_tensor(occurrence_rate)
    inverse = 1.0 / rate.clamp(min=MIN_OCCURRENCE_RATE)
    return rate.numel() * inverse / inverse.sum()


def mdwa_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    occurrence_rate: Rates,
    margin: float = 0.1,
    gamma_bounds: tuple[float, float] = (1.0, 2.0),
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Margin-truncated Difficulty-aware Weighted Asymmetric loss (paper eq. 6).

    Per entry: ``-(y log p + (1-y) p_m^gamma_i log(1 - p_m))`` with ``p_m = max(p - m, 0)``
    and ``gamma_i = B_L + (B_R - B_L) r_i``. The factor ``p_m^gamma`` is differentiated
    (eq. 7), so negatives below the margin get exactly zero gradient.
    logits, targets, mask: (B, N); occurrence_rate: (N,). Returns a scalar.
    """
    return _asymmetric_loss(logits, targets, occurrence_rate, margin, gamma_bounds, mask, detach_focus=False)


def wa_loss(
    logits: torch.Tensor, targets: torch.Tensor, occurrence_rate: Rates, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """ME-GraphAU's Weighted Asymmetric loss: MDWA with margin 0 and gamma 1.

    Same value as ``mdwa_loss(margin=0, gamma_bounds=(1, 1))``, but the negative weight
    ``p`` is detached, as ME-GraphAU computes it without gradient.
    """
    return _asymmetric_loss(logits, targets, occurrence_rate, 0.0, (1.0, 1.0), mask, detach_focus=True)


def weighted_bce_loss(
    logits: torch.Tensor, targets: torch.Tensor, occurrence_rate: Rates, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted multi-label cross-entropy (WCE): ``-(y log p + (1-y) log(1-p))`` weighted by omega_i."""
    logits, targets, weights, mask = _prepare(logits, targets, occurrence_rate, mask)
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # (B, N)
    return _masked_weighted_mean(per_entry, weights, mask)


def classification_loss(
    name: str, margin: float = 0.1, gamma_bounds: tuple[float, float] = (1.0, 2.0)
) -> Callable[..., torch.Tensor]:
    """``loss(logits, targets, occurrence_rate, mask=None)`` for a ``loss.name`` of the ablations (Table 4).

    ``mdwa``: margin and difficulty-aware gamma (eq. 6); ``dwa``: gamma only (m = 0);
    ``mwa``: margin only (gamma = 1); ``wa``: ME-GraphAU's WA loss (focus weight detached);
    ``wce``: weighted BCE.
    """
    variants = {
        "mdwa": partial(mdwa_loss, margin=margin, gamma_bounds=gamma_bounds),
        "dwa": partial(mdwa_loss, margin=0.0, gamma_bounds=gamma_bounds),
        "mwa": partial(mdwa_loss, margin=margin, gamma_bounds=(1.0, 1.0)),
        "wa": wa_loss,
        "wce": weighted_bce_loss,
    }
    if name not in variants:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(variants)}")
    return variants[name]


def wdi_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    occurrence_rate: Rates,
    eps: float = 1.0,
    mask: torch.Tensor | None = None,
    reduction: str = "batch",
) -> torch.Tensor:
    """Weighted multi-label dice loss (paper eq. 8), ``(1/N) sum_i omega_i l_i``.

    ``reduction="batch"`` (default, JAA-Net's dice that the paper cites): one dice per AU
    over the known entries of the batch, ``l_i = 1 - (2 sum_b p y + eps) / (sum_b p^2 +
    sum_b y^2 + eps)``. With eps = 1 this counters the bias towards "absent": the batch
    sums dwarf eps, so a missed positive costs as much as a false positive.
    ``reduction="sample"``: eq. 8 read per (sample, AU), ``1 - (2 y p + eps) / (y^2 + p^2 + eps)``
    averaged over known entries like the other losses; there eps = 1 is as large as the
    terms, so negatives (y = 0: ``p^2 / (p^2 + 1)``) are pushed harder than positives.
    Under DDP the batch is the process's local batch (docs/losses.md).
    logits, targets, mask: (B, N); occurrence_rate: (N,). Returns a scalar.
    """
    if eps <= 0:
        raise ValueError(f"wdi_loss: eps must be > 0 (it keeps the ratio finite), got {eps}")
    if reduction not in WDI_REDUCTIONS:
        raise ValueError(f"wdi_loss: reduction must be one of {', '.join(WDI_REDUCTIONS)}, got {reduction!r}")
    logits, targets, weights, mask = _prepare(logits, targets, occurrence_rate, mask)
    prob = torch.where(mask, torch.sigmoid(logits), torch.zeros_like(logits))  # unknown entries add nothing
    if reduction == "sample":
        per_entry = 1.0 - (2.0 * targets * prob + eps) / (targets.square() + prob.square() + eps)  # (B, N)
        return _masked_weighted_mean(per_entry, weights, mask)
    overlap = (targets * prob).sum(0)  # (N,)
    squares = prob.square().sum(0) + targets.square().sum(0)  # (N,)
    per_au = 1.0 - (2.0 * overlap + eps) / (squares + eps)  # (N,); an AU without known entries gives 0
    return (weights * per_au).mean()


def auformer_loss(
    logits: torch.Tensor,
    aux_logits: torch.Tensor | None,
    targets: torch.Tensor,
    occurrence_rate: Rates,
    margin: float = 0.1,
    gamma_bounds: tuple[float, float] = (1.0, 2.0),
    eps: float = 1.0,
    mask: torch.Tensor | None = None,
    wdi_reduction: str = "batch",
) -> dict[str, torch.Tensor]:
    """The AUFormer objective (paper eq. 9): MDWA(main) + WDI(main) + MDWA(aux).

    Returns ``{"total", "mdwa", "wdi", "mdwa_aux"}`` (scalars). Without auxiliary logits
    (``aux_logits=None``) there is no auxiliary term and ``"mdwa_aux"`` is a zero, so
    every run logs the same keys.
    """
    mdwa = mdwa_loss(logits, targets, occurrence_rate, margin, gamma_bounds, mask)
    wdi = wdi_loss(logits, targets, occurrence_rate, eps, mask, wdi_reduction)
    if aux_logits is None:
        mdwa_aux = torch.zeros((), dtype=mdwa.dtype, device=mdwa.device)
    else:
        mdwa_aux = mdwa_loss(aux_logits, targets, occurrence_rate, margin, gamma_bounds, mask)
    return {"total": mdwa + wdi + mdwa_aux, "mdwa": mdwa, "wdi": wdi, "mdwa_aux": mdwa_aux}


def intensity_loss(
    intensity: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None, max_intensity: float = INTENSITY_MAX
) -> torch.Tensor:
    """Masked mean squared error of AU intensities on the 0-1 scale: ``((pred - y) / 5)^2``.

    intensity: (B, N) predictions in [0, max_intensity]; targets: (B, N) in [0, max_intensity],
    ``-1`` or NaN = unknown (``mask=None`` means ``targets >= 0``). Returns the mean over known
    entries, 0 (with a graph) when none is known. Scaling by the maximum keeps the term on the
    same order as the classification losses (a constant 0.5 prediction costs at most 0.25).
    Why MSE and not an ordinal loss over the six levels: ICC and MAE, the metrics the literature
    reports, are squared/absolute errors on the numeric scale (docs/intensity.md).
    """
    if intensity.ndim != 2 or targets.shape != intensity.shape:
        raise ValueError(
            f"intensity and targets must both have shape (B, N), got {tuple(intensity.shape)} and {tuple(targets.shape)}"
        )
    intensity, targets, known = _upcast_and_mask(intensity, targets, mask)
    return _masked_weighted_mean(((intensity - targets) / max_intensity).square(), 1.0, known)


def _asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    occurrence_rate: Rates,
    margin: float,
    gamma_bounds: tuple[float, float],
    mask: torch.Tensor | None,
    detach_focus: bool,
) -> torch.Tensor:
    """Shared body of MDWA and WA: they differ only in margin, gamma and the detached focus weight."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    low, high = gamma_bounds
    if low <= 0 or high <= 0:
        raise ValueError(f"gamma_bounds must be positive, got {gamma_bounds}")
    logits, targets, weights, mask = _prepare(logits, targets, occurrence_rate, mask)
    rate = _as_rate_tensor(occurrence_rate).to(logits)
    gamma = low + (high - low) * rate  # (N,)
    negative = _truncated_focal_log(logits, gamma, margin, detach_focus)  # (B, N)
    per_entry = -(targets * F.logsigmoid(logits) + (1.0 - targets) * negative)  # (B, N)
    return _masked_weighted_mean(per_entry, weights, mask)


def _truncated_focal_log(logits: torch.Tensor, gamma: torch.Tensor, margin: float, detach_focus: bool) -> torch.Tensor:
    """``p_m^gamma * log(1 - p_m)`` with ``p_m = max(sigmoid(z) - m, 0)``, finite in value and gradient.

    Where ``p <= m`` the term is exactly 0 with zero gradient. ``torch.where`` alone would
    still let inf/NaN from the unused branch into the gradient (e.g. ``d p_m^gamma`` at
    ``p_m = 0`` for gamma < 1), so the unused branch is first fed a harmless placeholder.
    """
    if margin == 0.0:
        active = torch.ones_like(logits, dtype=torch.bool)
        log_pm = F.logsigmoid(logits)  # log p, exact where p underflows
        log_one_minus_pm = F.logsigmoid(-logits)  # log(1 - p)
    else:
        prob = torch.sigmoid(logits)
        active = prob > margin
        log_pm = torch.log(torch.where(active, prob - margin, torch.ones_like(prob)))
        # 1 - p_m = (1 - p) + m; sigmoid(-z) avoids the cancellation in 1 - p. Always >= m > 0.
        log_one_minus_pm = torch.log(torch.sigmoid(-logits) + margin)
    focus = torch.exp(gamma * log_pm)  # p_m^gamma, (B, N)
    if detach_focus:
        focus = focus.detach()
    return torch.where(active, focus * log_one_minus_pm, torch.zeros_like(logits))


def _masked_weighted_mean(per_entry: torch.Tensor, weights: torch.Tensor | float, mask: torch.Tensor) -> torch.Tensor:
    """Sum of ``omega_i * l[b, i]`` over known entries / number of known entries (0 when none is known)."""
    weighted = torch.where(mask, per_entry * weights, torch.zeros_like(per_entry))  # (B, N)
    return weighted.sum() / mask.sum().clamp(min=1)


def _prepare(
    logits: torch.Tensor,
    targets: torch.Tensor,
    occurrence_rate: Rates,
    mask: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check shapes, upcast to float32 (autocast safety), build the bool mask, zero junk targets."""
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (B, N), got {tuple(logits.shape)}")
    if targets.shape != logits.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} does not match logits shape {tuple(logits.shape)}")
    if mask is not None and mask.shape != logits.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits shape {tuple(logits.shape)}")
    logits, targets, known = _upcast_and_mask(logits, targets, mask)
    weights = au_weights(occurrence_rate).to(logits)
    if weights.numel() != logits.shape[1]:
        raise ValueError(f"occurrence_rate has {weights.numel()} entries but logits have {logits.shape[1]} AUs")
    return logits, targets, weights, known


def _upcast_and_mask(
    values: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Upcast to float32 (autocast safety; float64 stays), the bool mask of known entries (``targets >= 0``
    unless ``mask`` is given), and targets with the junk at unknown entries (-1, NaN) set to 0."""
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    values = values.to(dtype)
    targets = targets.to(device=values.device, dtype=dtype)
    known = targets >= 0 if mask is None else mask.to(values.device).bool()
    return values, torch.where(known, targets, torch.zeros_like(targets)), known


def _as_rate_tensor(occurrence_rate: Rates) -> torch.Tensor:
    """Occurrence rates as a 1-D float tensor, checked to lie in [0, 1]."""
    rate = torch.as_tensor(occurrence_rate)
    rate = rate.to(torch.float64 if rate.dtype == torch.float64 else torch.float32)
    if rate.ndim != 1 or rate.numel() == 0:
        raise ValueError(f"occurrence_rate must be a non-empty 1-D sequence (one rate per AU), got shape {tuple(rate.shape)}")
    if not bool(((rate >= 0) & (rate <= 1)).all()):
        raise ValueError(f"occurrence_rate values must lie in [0, 1], got {rate.tolist()}")
    return rate
