"""The fused groups cache their fused weights without autograd: the cache must never serve stale weights."""

from __future__ import annotations

import torch

from auformer.model import build_model


def _pair(tiny_model_kwargs):
    torch.manual_seed(0)
    reference = build_model(2, moke="reference", **tiny_model_kwargs).eval()
    fused = build_model(2, moke="fused", **tiny_model_kwargs).eval()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def test_cache_is_reused_and_follows_optimizer_steps(tiny_model_kwargs):
    reference, fused = _pair(tiny_model_kwargs)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    group = fused.mlp_groups[0]
    with torch.no_grad():
        fused(images)
        first = group.fused_weights()
        assert group.fused_weights() is first  # unchanged parameters: no rebuild
    for model in (reference, fused):  # the same optimiser step on both (up-projections leave zero)
        optimizer = torch.optim.SGD(model.learnable_parameters(), lr=0.5)
        output = model(images)
        (output.logits.sum() + output.aux_logits.sum()).backward()
        optimizer.step()
    with torch.no_grad():
        assert group.fused_weights() is not first  # in-place update seen through the version counter
        torch.testing.assert_close(fused(images).logits, reference(images).logits, rtol=1e-4, atol=1e-5)


def test_cache_follows_load_state_dict_and_dtype(tiny_model_kwargs):
    reference, fused = _pair(tiny_model_kwargs)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused.float()(images.float())  # build the float32 cache
        state = {k: (0.3 * torch.randn_like(v) if ".up." in k else v) for k, v in reference.state_dict().items()}
        reference.load_state_dict(state)
        fused.load_state_dict(state, assign=True)  # new parameter objects
        reference.double(), fused.double()
        torch.testing.assert_close(fused(images).logits, reference(images).logits, rtol=1e-9, atol=1e-11)


def test_recompute_off_gives_the_reference_gradients(tiny_model_kwargs):
    """``recompute=False`` keeps the d-space activations instead of recomputing them: same numbers."""
    torch.manual_seed(0)
    reference = build_model(2, moke="reference", **tiny_model_kwargs).double().eval()  # eval: no dropout
    fused = build_model(2, moke="fused", recompute=False, **tiny_model_kwargs).double().eval()
    state = {k: (0.3 * torch.randn_like(v) if ".up." in k else v) for k, v in reference.state_dict().items()}
    reference.load_state_dict(state)
    fused.load_state_dict(state)
    assert not fused.mlp_groups[0].recompute
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for model in (reference, fused):
        output = model(images)
        (output.logits.pow(2).sum() + output.aux_logits.sum()).backward()
    for (name, ref), (_, fast) in zip(reference.named_parameters(), fused.named_parameters(), strict=True):
        if ref.requires_grad:
            torch.testing.assert_close(fast.grad, ref.grad, rtol=1e-9, atol=1e-11, msg=name)
