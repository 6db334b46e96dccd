"""Losses against hand-computed values, the paper's gradient (eq. 7), masking and low-precision safety."""

import math

import pytest
import torch

from auformer.losses import (
    MIN_OCCURRENCE_RATE,
    au_weights,
    auformer_loss,
    mdwa_loss,
    wa_loss,
    wdi_loss,
    weighted_bce_loss,
)

# The 2x3 hand example: rates r = (0.5, 0.25, 0.25) -> 1/r = (2, 4, 4), sum 10,
# omega = 3 * (2, 4, 4) / 10 = (0.6, 1.2, 1.2); gamma = 1 + r = (1.5, 1.25, 1.25).
RATES = [0.5, 0.25, 0.25]
PROBS = torch.tensor([[0.8, 0.3, 0.05], [0.6, 0.5, 0.9]], dtype=torch.float64)
TARGETS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
LOGITS = torch.logit(PROBS)

# MDWA, margin 0.1, per entry omega_i * loss:
MDWA_ENTRIES = [
    [
        0.6 * -math.log(0.8),  # y=1, p=0.8: 0.6 * 0.22314355 = 0.13388613
        1.2 * -(0.2**1.25) * math.log(0.8),  # y=0, p_m=0.2: 1.2 * 0.13374806 * 0.22314355 = 0.03581402
        0.0,  # y=0, p=0.05 < m: truncated
    ],
    [
        0.6 * -(0.5**1.5) * math.log(0.5),  # y=0, p_m=0.5: 0.6 * 0.35355339 * 0.69314718 = 0.14703872
        1.2 * -math.log(0.5),  # y=1, p=0.5: 1.2 * 0.69314718 = 0.83177662
        1.2 * -(0.8**1.25) * math.log(0.2),  # y=0, p_m=0.8: 1.2 * 0.75659329 * 1.60943791 = 1.46122790
    ],
]
MDWA_EXPECTED = 2.60974339 / 6  # batch mean of (1/N) sum_i = sum of the six entries / 6

# WDI per (sample, AU) (reduction="sample"), eps 1, per entry omega_i * (1 - (2yp + 1) / (y^2 + p^2 + 1)):
WDI_ENTRIES = [
    [0.6 * (1 - 2.6 / 2.64), 1.2 * (1 - 1 / 1.09), 1.2 * (1 - 1 / 1.0025)],  # 0.00909091, 0.09908257, 0.00299252
    [0.6 * (1 - 1 / 1.36), 1.2 * (1 - 2 / 2.25), 1.2 * (1 - 1 / 1.81)],  # 0.15882353, 0.13333333, 0.53701657
]
WDI_EXPECTED = 0.94033943 / 6

# WDI over the batch (reduction="batch", the default), eps 1, per AU omega_i * (1 - (2 sum py + 1) / (sum p^2 + sum y^2 + 1)):
WDI_BATCH_AUS = [
    0.6 * (1 - (2 * 0.8 + 1) / (0.64 + 0.36 + 1 + 1)),  # p (0.8, 0.6), y (1, 0): 0.6 * 0.4/3 = 0.08
    1.2 * (1 - (2 * 0.5 + 1) / (0.09 + 0.25 + 1 + 1)),  # p (0.3, 0.5), y (0, 1): 1.2 * 0.34/2.34 = 0.17435897
    1.2 * (1 - 1 / (0.0025 + 0.81 + 1)),  # p (0.05, 0.9), y (0, 0): 1.2 * 0.8125/1.8125 = 0.53793103
]
WDI_BATCH_EXPECTED = 0.79229001 / 3  # mean over the 3 AUs


def test_au_weights_hand_values_and_floor():
    torch.testing.assert_close(au_weights(RATES), torch.tensor([0.6, 1.2, 1.2]))
    assert au_weights([0.3, 0.3, 0.3, 0.3]).tolist() == pytest.approx([1.0] * 4)
    weights = au_weights([0.0, 0.5])  # never-seen AU: clamped rate, finite weight
    expected_first = 2 * (1 / MIN_OCCURRENCE_RATE) / (1 / MIN_OCCURRENCE_RATE + 2)
    assert weights[0].item() == pytest.approx(expected_first, rel=1e-5)
    assert weights.sum().item() == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [[0.5, 1.5], [-0.1], [], [[0.1, 0.2]]])
def test_au_weights_rejects_bad_rates(bad):
    with pytest.raises(ValueError, match="occurrence_rate"):
        au_weights(bad)


def test_mdwa_hand_example():
    assert sum(map(sum, MDWA_ENTRIES)) == pytest.approx(2.60974339, abs=1e-7)
    loss = mdwa_loss(LOGITS, TARGETS, RATES, margin=0.1)
    assert loss.item() == pytest.approx(MDWA_EXPECTED, abs=1e-7)


def test_wdi_hand_example():
    assert sum(map(sum, WDI_ENTRIES)) == pytest.approx(0.94033943, abs=1e-7)
    assert sum(WDI_BATCH_AUS) == pytest.approx(0.79229001, abs=1e-7)
    assert wdi_loss(LOGITS, TARGETS, RATES, reduction="sample").item() == pytest.approx(WDI_EXPECTED, abs=1e-7)
    assert wdi_loss(LOGITS, TARGETS, RATES).item() == pytest.approx(WDI_BATCH_EXPECTED, abs=1e-7)  # batch by default


def _dice_grad(p, y, overlap, squares, eps=1.0):
    """d/dp of 1 - (2 overlap + eps) / (squares + eps), where overlap has slope y and squares slope 2p in p."""
    return -(2 * y * (squares + eps) - (2 * overlap + eps) * 2 * p) / (squares + eps) ** 2


def test_wdi_gradients_match_hand_formulas():
    """dL/dz = omega_i / N * dl/dp * p (1 - p) (batch) and omega_i / (B N) * dl/dp * p (1 - p) (sample)."""
    omega, p, y = torch.tensor([0.6, 1.2, 1.2], dtype=torch.float64), PROBS, TARGETS
    batch = _dice_grad(p, y, (p * y).sum(0), (p * p).sum(0) + (y * y).sum(0)) * omega / 3 * p * (1 - p)
    sample = _dice_grad(p, y, p * y, p * p + y * y) * omega / 6 * p * (1 - p)
    # AU1 by hand: overlap 0.8, squares 2, so for p=0.8, y=1: -(2*3 - 2.6*1.6)/9 = -0.20444444; * 0.2 * 0.16 = -0.00654222
    assert batch[0, 0].item() == pytest.approx(-(2 * 3 - 2.6 * 1.6) / 9 * 0.2 * 0.16, abs=1e-12)
    for reduction, expected in (("batch", batch), ("sample", sample)):
        logits = LOGITS.clone().requires_grad_()
        wdi_loss(logits, TARGETS, RATES, reduction=reduction).backward()
        torch.testing.assert_close(logits.grad, expected, rtol=1e-6, atol=1e-12)  # omega is float32


def test_wdi_batch_form_costs_a_missed_rare_positive_more_than_a_false_positive():
    """One positive among ten (a rare AU). Missing it: batch 1 - 1/2 = 0.5, per sample 0.5/10 = 0.05.
    One false positive instead: batch 1 - 3/4 = 0.25, per sample also 0.05. Only the batch form
    makes missing the rare positive the costlier error (the bias toward "absent" it counters)."""
    y = torch.tensor([[1.0]] + [[0.0]] * 9)
    missed = torch.logit(torch.tensor([[1e-6]] + [[1e-6]] * 9), eps=0).double()
    false_positive = torch.logit(torch.tensor([[1 - 1e-6]] + [[1 - 1e-6]] + [[1e-6]] * 8)).double()
    rate = [0.1]
    assert wdi_loss(missed, y, rate).item() == pytest.approx(1 - 1 / 2, abs=1e-4)  # 1 - (0 + 1) / (0 + 1 + 1)
    assert wdi_loss(false_positive, y, rate).item() == pytest.approx(1 - 3 / 4, abs=1e-4)  # 1 - (2 + 1) / (2 + 1 + 1)
    assert wdi_loss(missed, y, rate, reduction="sample").item() == pytest.approx(0.05, abs=1e-4)
    assert wdi_loss(false_positive, y, rate, reduction="sample").item() == pytest.approx(0.05, abs=1e-4)


def test_weighted_bce_hand_example():
    omega = [0.6, 1.2, 1.2]
    entries = [
        omega[i] * -math.log(p if y else 1 - p)
        for row_p, row_y in zip(PROBS.tolist(), TARGETS.tolist())
        for i, (p, y) in enumerate(zip(row_p, row_y))
    ]
    assert weighted_bce_loss(LOGITS, TARGETS, RATES).item() == pytest.approx(sum(entries) / 6, abs=1e-7)


def test_auformer_loss_is_sum_of_terms():
    aux = LOGITS.flip(0)
    parts = auformer_loss(LOGITS, aux, TARGETS, RATES, margin=0.1)
    assert parts["mdwa"].item() == pytest.approx(MDWA_EXPECTED, abs=1e-7)
    assert parts["wdi"].item() == pytest.approx(WDI_BATCH_EXPECTED, abs=1e-7)
    assert parts["mdwa_aux"].item() == pytest.approx(mdwa_loss(aux, TARGETS, RATES, margin=0.1).item())
    assert parts["total"].item() == pytest.approx(MDWA_EXPECTED + WDI_BATCH_EXPECTED + parts["mdwa_aux"].item())
    no_aux = auformer_loss(LOGITS, None, TARGETS, RATES, margin=0.1, wdi_reduction="sample")
    assert no_aux["mdwa_aux"].item() == 0.0
    assert no_aux["total"].item() == pytest.approx(MDWA_EXPECTED + WDI_EXPECTED)


@pytest.mark.parametrize("margin", [0.0, 0.1, 0.3])
def test_negative_gradient_matches_eq7(margin):
    """d loss / dZ for negatives: omega/(B N) * p_m^g (1/(1-p_m) - g log(1-p_m)/p_m) p(1-p), 0 for p < m."""
    logits = torch.linspace(-6, 6, 25, dtype=torch.float64).reshape(5, 5).requires_grad_()
    rates = torch.tensor([0.05, 0.2, 0.5, 0.8, 1.0], dtype=torch.float64)
    mdwa_loss(logits, torch.zeros_like(logits), rates, margin=margin, gamma_bounds=(1.0, 2.0)).backward()
    p = torch.sigmoid(logits.detach())
    gamma = 1.0 + rates
    p_m = (p - margin).clamp(min=1e-300)
    eq7 = p_m**gamma * (1 / (1 - p_m) - gamma * torch.log1p(-p_m) / p_m) * p * (1 - p)
    eq7 = torch.where(p < margin, torch.zeros_like(eq7), eq7)
    expected = au_weights(rates) * eq7 / logits.numel()
    torch.testing.assert_close(logits.grad, expected)
    if margin > 0:
        assert (logits.grad[p < margin] == 0).all() and (p < margin).any()


def test_positive_gradient():
    logits = torch.linspace(-4, 4, 6, dtype=torch.float64).reshape(2, 3).requires_grad_()
    mdwa_loss(logits, torch.ones_like(logits), RATES).backward()
    expected = -au_weights(RATES).double() * (1 - torch.sigmoid(logits.detach())) / 6
    torch.testing.assert_close(logits.grad, expected)


def test_wa_equals_mdwa_margin0_gamma1_but_detaches_weight():
    logits = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    targets = (torch.rand(4, 3, generator=torch.Generator().manual_seed(1)) > 0.5).double()
    wa_logits = logits.clone().requires_grad_()
    wa = wa_loss(wa_logits, targets, RATES)
    mdwa = mdwa_loss(logits, targets, RATES, margin=0.0, gamma_bounds=(1.0, 1.0))
    assert wa.item() == pytest.approx(mdwa.item(), rel=1e-12)
    wa.backward()
    p = torch.sigmoid(logits)
    # negatives: -p.detach() * log(1 - p) -> d/dZ = p * p; positives: -log p -> -(1 - p)
    expected = au_weights(RATES).double() * torch.where(targets > 0, -(1 - p), p * p) / logits.numel()
    torch.testing.assert_close(wa_logits.grad, expected)


def _all_losses(logits, targets, mask=None):
    return {
        "mdwa": mdwa_loss(logits, targets, RATES, margin=0.1, mask=mask),
        "wdi": wdi_loss(logits, targets, RATES, mask=mask),
        "wdi_sample": wdi_loss(logits, targets, RATES, mask=mask, reduction="sample"),
        "wa": wa_loss(logits, targets, RATES, mask=mask),
        "wbce": weighted_bce_loss(logits, targets, RATES, mask=mask),
    }


def test_mask_normalises_by_known_entries():
    mask = torch.tensor([[1, 0, 1], [1, 1, 0]])
    masked = mdwa_loss(LOGITS, TARGETS, RATES, margin=0.1, mask=mask)
    known = [MDWA_ENTRIES[b][i] for b in range(2) for i in range(3) if mask[b, i]]
    assert masked.item() == pytest.approx(sum(known) / 4, abs=1e-7)
    nothing_known = mdwa_loss(LOGITS.clone().requires_grad_(), TARGETS, RATES, mask=torch.zeros(2, 3))
    assert nothing_known.item() == 0.0 and nothing_known.requires_grad


def test_masked_entries_change_nothing_even_with_junk():
    mask = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    clean_logits = LOGITS.clone().requires_grad_()
    junk_logits = torch.where(mask > 0, LOGITS, torch.full_like(LOGITS, 1e4)).requires_grad_()
    junk_targets = torch.where(mask > 0, TARGETS, torch.tensor(float("nan"), dtype=torch.float64))
    for name in ("mdwa", "wdi", "wdi_sample", "wa", "wbce"):
        clean = _all_losses(clean_logits, TARGETS, mask)[name]
        junk = _all_losses(junk_logits, junk_targets, mask)[name]
        clean_grad, junk_grad = torch.autograd.grad(clean, clean_logits)[0], torch.autograd.grad(junk, junk_logits)[0]
        assert junk.item() == pytest.approx(clean.item(), rel=1e-12), name
        assert torch.isfinite(junk_grad).all(), name
        torch.testing.assert_close(junk_grad, clean_grad)
        assert (junk_grad[mask == 0] == 0).all(), name


def test_default_mask_from_minus_one_targets():
    targets = TARGETS.clone()
    targets[1, 2] = -1.0
    mask = (targets >= 0).double()
    for name, value in _all_losses(LOGITS, targets).items():
        assert value.item() == pytest.approx(_all_losses(LOGITS, TARGETS, mask)[name].item()), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("margin, gamma_bounds", [(0.0, (1.0, 2.0)), (0.1, (0.5, 2.0)), (0.3, (0.2, 0.8))])
def test_low_precision_extreme_logits_finite(dtype, margin, gamma_bounds):
    extremes = torch.tensor([[30.0, -30.0, 1e4, -1e4], [0.0, 1e4, -1e4, 30.0]])
    rates = [0.0, 0.1, 0.5, 1.0]
    targets = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 1.0, 1.0, 0.0]])
    # p exactly at the margin, where p_m = 0
    extremes[1, 0] = math.log(margin / (1 - margin)) if margin > 0 else 0.0
    layer = torch.nn.Linear(4, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(4))
        layer.bias.zero_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_logits = layer(extremes)  # bf16 under CPU autocast
    assert autocast_logits.dtype == torch.bfloat16
    for logits in (autocast_logits, extremes.to(dtype).requires_grad_()):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            parts = auformer_loss(logits, logits, targets, rates, margin=margin, gamma_bounds=gamma_bounds)
            others = [wa_loss(logits, targets, rates), weighted_bce_loss(logits, targets, rates)]
        total = parts["total"] + sum(others)
        assert torch.isfinite(total), parts
        leaf = layer.weight if logits is autocast_logits else logits
        (grad,) = torch.autograd.grad(total, leaf)
        assert torch.isfinite(grad).all()


@pytest.mark.parametrize("margin", [0.1, 0.15, 0.3])
def test_exactly_at_margin_gradient_is_zero(margin):
    """p == m in float32 (p_m = 0) with gamma < 1: d p_m^gamma is infinite there, the loss gradient must be 0."""
    logits = torch.logit(torch.tensor([[margin, margin]])).requires_grad_()
    assert (torch.sigmoid(logits) == torch.tensor(margin)).all()
    loss = mdwa_loss(logits, torch.zeros(1, 2), [0.2, 0.6], margin=margin, gamma_bounds=(0.3, 0.9))
    loss.backward()
    assert loss.item() == 0.0 and (logits.grad == 0).all()


@pytest.mark.parametrize("margin, gamma_bounds", [(0.0, (1.0, 2.0)), (0.1, (1.0, 2.0)), (0.15, (0.5, 3.0))])
def test_gradcheck_float64(margin, gamma_bounds):
    generator = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 4, dtype=torch.float64, generator=generator) * 2).requires_grad_()
    targets = (torch.rand(3, 4, generator=generator) > 0.5).double()
    mask = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [0, 1, 1, 1]])
    rates = [0.1, 0.3, 0.6, 0.9]
    p = torch.sigmoid(logits.detach())
    assert ((p - margin).abs() > 1e-3).all()  # away from the kink at p = m
    assert torch.autograd.gradcheck(lambda z: mdwa_loss(z, targets, rates, margin, gamma_bounds, mask), (logits,))
    assert torch.autograd.gradcheck(lambda z: wdi_loss(z, targets, rates, mask=mask), (logits,))
    assert torch.autograd.gradcheck(lambda z: wdi_loss(z, targets, rates, mask=mask, reduction="sample"), (logits,))
    assert torch.autograd.gradcheck(lambda z: weighted_bce_loss(z, targets, rates, mask=mask), (logits,))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="targets shape"):
        mdwa_loss(LOGITS, TARGETS[:, :2], RATES)
    with pytest.raises(ValueError, match="occurrence_rate has 2 entries"):
        wdi_loss(LOGITS, TARGETS, [0.5, 0.5])
    with pytest.raises(ValueError, match="margin"):
        mdwa_loss(LOGITS, TARGETS, RATES, margin=1.0)
    with pytest.raises(ValueError, match=r"logits must have shape \(B, N\)"):
        weighted_bce_loss(LOGITS[0], TARGETS[0], RATES)


def test_loss_variants_of_the_ablation_by_hand():
    """MWA (margin only, gamma 1) and DWA (gamma only, m 0) on the 2x3 example; WA/WCE are the baseline functions."""
    from auformer.losses import classification_loss

    log = math.log
    mwa_entries = [
        0.6 * -log(0.8),
        1.2 * -0.2 * log(0.8),
        0.0,  # p=0.05 < m: truncated
        0.6 * -0.5 * log(0.5),
        1.2 * -log(0.5),
        1.2 * -0.8 * log(0.2),
    ]
    dwa_entries = [
        0.6 * -log(0.8),
        1.2 * -(0.3**1.25) * log(0.7),
        1.2 * -(0.05**1.25) * log(0.95),
        0.6 * -(0.6**1.5) * log(0.4),
        1.2 * -log(0.5),
        1.2 * -(0.9**1.25) * log(0.1),
    ]
    mwa = classification_loss("mwa", margin=0.1, gamma_bounds=(1.0, 2.0))
    dwa = classification_loss("dwa", margin=0.1, gamma_bounds=(1.0, 2.0))
    assert mwa(LOGITS, TARGETS, RATES).item() == pytest.approx(sum(mwa_entries) / 6, abs=1e-7)
    assert dwa(LOGITS, TARGETS, RATES).item() == pytest.approx(sum(dwa_entries) / 6, abs=1e-7)
    assert classification_loss("mdwa", 0.1, (1.0, 2.0))(LOGITS, TARGETS, RATES).item() == pytest.approx(MDWA_EXPECTED, abs=1e-7)
    assert classification_loss("wa") is wa_loss and classification_loss("wce") is weighted_bce_loss
    with pytest.raises(ValueError, match="unknown loss 'focal'; choose from mdwa, dwa, mwa, wa, wce"):
        classification_loss("focal")
