"""The fused expert groups must equal the literal reference: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch

from auformer.model import build_model

NUM_AUS = 2

OPTION_CASES = {
    "default": {},
    "no_collaboration": dict(collaborate=False),
    "no_mrf": dict(use_mrf=False),
    "no_ca_no_aux_head": dict(use_ca=False, aux_head=False),
    "dilations_123_ca_size_5_d_2_scale_half": dict(dilations=[1, 2, 3], ca_size=5, d=2, scale=0.5),
    "grid_6x6_dilations_1": dict(img_size=48, dilations=[1]),
    "two_prefix_tokens": dict(backbone="deit_tiny_distilled_patch16_224"),  # CLS + distillation token
}


def _model_pair(tiny_model_kwargs: dict, dtype: torch.dtype, **options):
    """Reference and fused models holding the same (init-broken) weights, in eval mode."""
    kwargs = {**tiny_model_kwargs, **options}
    torch.manual_seed(0)
    reference = build_model(NUM_AUS, moke="reference", **kwargs).to(dtype)
    fused = build_model(NUM_AUS, moke="fused", **kwargs).to(dtype)
    state = reference.state_dict()
    generator = torch.Generator().manual_seed(1)
    for name, tensor in state.items():
        if ".up." in name:  # zero-init up-projections would hide every expert; break the init
            state[name] = 0.5 * torch.randn(tensor.shape, generator=generator, dtype=dtype)
    reference.load_state_dict(state)
    fused.load_state_dict(state)
    return reference.eval(), fused.eval()


def _outputs_and_grads(model, images: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    output = model(images)
    loss = (output.logits**2).sum() + output.logits.sum()
    if output.aux_logits is not None:
        loss = loss + (output.aux_logits**3).sum()
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    outputs = [t for t in (output.logits, output.aux_logits, output.features, output.expert_features) if t is not None]
    return [t.detach() for t in outputs], grads


def _assert_match(reference, fused, images, rtol: float, atol: float) -> None:
    ref_outputs, ref_grads = _outputs_and_grads(reference, images)
    fused_outputs, fused_grads = _outputs_and_grads(fused, images)
    for ref_out, fused_out in zip(ref_outputs, fused_outputs, strict=True):
        torch.testing.assert_close(fused_out, ref_out, rtol=rtol, atol=atol)
    assert ref_grads.keys() == fused_grads.keys()
    for name in ref_grads:
        assert ref_grads[name] is not None and fused_grads[name] is not None, name
        torch.testing.assert_close(fused_grads[name], ref_grads[name], rtol=rtol, atol=atol, msg=name)


def test_same_state_dict_layout(tiny_model_kwargs):
    reference = build_model(NUM_AUS, moke="reference", **tiny_model_kwargs)
    fused = build_model(NUM_AUS, moke="fused", **tiny_model_kwargs)
    ref_shapes = {k: v.shape for k, v in reference.state_dict().items()}
    assert ref_shapes == {k: v.shape for k, v in fused.state_dict().items()}
    fused.load_state_dict(reference.state_dict())  # strict: one state dict loads into either


@pytest.mark.parametrize("options", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_fused_equals_reference_float64(tiny_model_kwargs, options):
    reference, fused = _model_pair(tiny_model_kwargs, torch.float64, **options)
    size = options.get("img_size", tiny_model_kwargs["img_size"])
    images = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    _assert_match(reference, fused, images, rtol=1e-9, atol=1e-11)


def test_fused_equals_reference_float32(tiny_model_kwargs):
    reference, fused = _model_pair(tiny_model_kwargs, torch.float32)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    _assert_match(reference, fused, images, rtol=1e-4, atol=1e-5)


def test_fused_equals_reference_in_train_mode_without_dropout(tiny_model_kwargs):
    """Train mode (no dropout) runs the same graph as eval for both; the backbone stays in eval."""
    reference, fused = _model_pair(tiny_model_kwargs, torch.float64, dropout=0.0)
    reference.train()
    fused.train()
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    _assert_match(reference, fused, images, rtol=1e-9, atol=1e-11)


def test_dropout_is_active_in_train_mode(tiny_model_kwargs):
    """With dropout on, train-mode outputs are stochastic and differ from eval (so the option is live)."""
    _, fused = _model_pair(tiny_model_kwargs, torch.float64, dropout=0.5)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        evaluated = fused(images).logits
        fused.train()
        first, second = fused(images).logits, fused(images).logits
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, evaluated)
