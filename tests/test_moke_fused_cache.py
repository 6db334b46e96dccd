"""The fused groups cache their fused weights without autograd: the cache must never serve stale weights.

Every way a weight can change is tried, including those that leave a parameter's storage and
version counter as they were (fused optimisers, ``.data`` writes, collectives, ``functional_call``),
and after each the fused model must compute what the literal reference computes with the same
state dict.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from auformer.model import build_model
from conftest import TINY_BACKBONE, TINY_IMG_SIZE

TINY = dict(backbone=TINY_BACKBONE, backbone_weights="random", img_size=TINY_IMG_SIZE)


def _pair(tiny_model_kwargs):
    torch.manual_seed(0)
    reference = build_model(2, moke="reference", **tiny_model_kwargs).eval()
    fused = build_model(2, moke="fused", **tiny_model_kwargs).eval()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _images(seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(2, 3, TINY_IMG_SIZE, TINY_IMG_SIZE, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def _perturbed(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """The learnable parameters plus noise (the zero-initialised up-projections get weight)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: p.detach() + 0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype)
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _assert_fused_equals_reference(fused, reference, images, params=None) -> None:
    """No-grad outputs of ``fused`` equal the reference loaded with fused's current state (or both given ``params``)."""
    reference.to(next(fused.parameters()).dtype).load_state_dict(fused.state_dict())
    with torch.no_grad():
        if params is None:
            got, expected = fused(images), reference(images)
        else:
            got, expected = functional_call(fused, params, (images,)), functional_call(reference, params, (images,))
    rtol, atol = (1e-9, 1e-11) if images.dtype == torch.float64 else (1e-4, 1e-4)  # stale weights are off by > 0.01
    torch.testing.assert_close(got.logits, expected.logits, rtol=rtol, atol=atol)
    torch.testing.assert_close(got.aux_logits, expected.aux_logits, rtol=rtol, atol=atol)


def _train_step(model, optimizer, images) -> None:
    model.train()
    output = model(images)
    (output.logits.pow(2).sum() + output.aux_logits.sum()).backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()


def test_cache_is_reused_and_follows_optimizer_steps(tiny_model_kwargs):
    reference, fused = _pair(tiny_model_kwargs)
    images = _images()
    group = fused.mlp_groups[0]
    with torch.no_grad():
        fused(images)
        first = group.fused_weights()
        assert group.fused_weights() is first  # unchanged parameters: no rebuild
    _train_step(fused, torch.optim.SGD(fused.learnable_parameters(), lr=0.5), images)
    with torch.no_grad():
        assert group.fused_weights() is not first
    _assert_fused_equals_reference(fused, reference, images)


def test_cache_follows_load_state_dict_and_dtype(tiny_model_kwargs):
    reference, fused = _pair(tiny_model_kwargs)
    images = _images(1, torch.float64)
    with torch.no_grad():
        fused.float()(images.float())  # build the float32 cache
        state = {k: (0.3 * torch.randn_like(v) if ".up." in k else v) for k, v in reference.state_dict().items()}
        fused.load_state_dict(state, assign=True)  # new parameter objects
        fused.double()
    _assert_fused_equals_reference(fused, reference, images)


@torch.no_grad()
def _fused_step(model, optimizer_class, seed: int = 0) -> None:
    """A fused optimiser's step: its kernel writes the parameters without bumping their version counters."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.learnable_parameters():
        p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
    optimizer_class(model.learnable_parameters(), lr=0.02, fused=True).step()


@pytest.fixture
def cached(tiny_model_kwargs):
    """(reference, fused, images), the fused model's cache built by a no-grad forward on ``images``."""
    reference, fused = _pair(tiny_model_kwargs)
    images = _images()
    with torch.no_grad():
        fused(images)
    return reference, fused, images


@pytest.mark.parametrize("optimizer_class", [torch.optim.AdamW, torch.optim.SGD], ids=["adamw", "sgd"])
def test_cache_follows_a_fused_optimizer_step(cached, optimizer_class):
    reference, fused, images = cached
    _fused_step(fused, optimizer_class)
    _assert_fused_equals_reference(fused, reference, images)


def test_cache_follows_functional_call_under_no_grad(cached):
    reference, fused, images = cached
    _assert_fused_equals_reference(fused, reference, images, params=_perturbed(fused, 1))  # swapped-in parameters
    _assert_fused_equals_reference(fused, reference, images)  # and back to the module's own


def test_cache_follows_data_writes(cached):
    reference, fused, images = cached
    up = fused.mlp_groups[0].experts[1].up.weight
    up.data.add_(torch.randn(up.shape, generator=torch.Generator().manual_seed(1)))  # .data: a version counter of its own
    _assert_fused_equals_reference(fused, reference, images)


def _broadcast_worker(rank: int, init_file: str) -> None:
    """Rank 0 and 1 start from different weights; after broadcasting rank 0's, rank 1 must compute rank 0's outputs."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)
        model = build_model(2, moke="fused", backbone_kwargs=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2), **TINY)
        model.load_state_dict(_perturbed(model, rank), strict=False)
        model.eval()
        images = _images()
        with torch.no_grad():
            model(images)  # rank 1's cache holds its own weights
            for p in model.parameters():
                dist.broadcast(p, src=0)
            logits = model(images).logits
        gathered = [torch.empty_like(logits) for _ in range(2)]
        dist.all_gather(gathered, logits)
        torch.testing.assert_close(gathered[1], gathered[0], rtol=1e-5, atol=1e-6)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_cache_follows_dist_broadcast(tmp_path):
    mp.spawn(_broadcast_worker, args=(str(tmp_path / "init"),), nprocs=2)  # raises if a rank's check fails


def test_cache_built_under_bf16_autocast_serves_fp32(tiny_model_kwargs):
    reference, fused = _pair(tiny_model_kwargs)
    fused.load_state_dict(_perturbed(fused, 2), strict=False)
    images = _images()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fused(images)  # builds the cache under autocast
    _assert_fused_equals_reference(fused, reference, images)


def _replace_submodule(model: torch.nn.Module, seed: int) -> None:
    """A perturbed copy of one expert's submodule put in its place: by ``setattr`` (seen by torch's registration
    hooks) or, for odd seeds, by a write to ``_modules`` that bypasses them (as ``swap_submodule`` does)."""
    groups = [*model.attn_groups, *model.mlp_groups]
    expert = groups[seed % len(groups)].experts[seed // len(groups) % len(groups[0].experts)]
    parent, name = [(expert, "down"), (expert, "conv"), (expert, "up"), (expert.ca, "q"), (expert.mrf.branches, "1")][seed % 5]
    new = copy.deepcopy(getattr(parent, name))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    if seed % 2:
        parent._modules[name] = new
    else:
        setattr(parent, name, new)


def _reregister(model: torch.nn.Module, seed: int) -> None:
    """``del`` one expert's CA key weight, then register a new one: the name leaves its dict and comes back last."""
    module = model.mlp_groups[seed % len(model.mlp_groups)].experts[0].ca.k
    weight = module.weight.detach()
    del module.weight
    noise = 0.3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(seed), dtype=weight.dtype)
    module.weight = torch.nn.Parameter(weight + noise)


OPERATIONS = ["adamw", "fused_adamw", "fused_sgd", "data_write", "data_assign", "no_grad_copy", "load", "load_assign",
              "functional_call", "bf16_forward", "inference_forward", "dtype", "replace_submodule", "reregister"]  # fmt: skip


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(st.tuples(st.sampled_from(OPERATIONS), st.integers(0, 2**16)), min_size=1, max_size=6))
def test_any_sequence_of_weight_changes_is_seen(tiny_model_kwargs, operations):
    """Fused no-grad forward == reference forward after every operation of a random sequence."""
    reference, fused = _pair(tiny_model_kwargs)
    dtype = torch.float32
    with torch.no_grad():
        fused(_images(dtype=dtype))
    for name, seed in operations:
        learnable = [p for p in fused.parameters() if p.requires_grad]
        target = learnable[seed % len(learnable)]
        noise = 0.3 * torch.randn(target.shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        params = None
        if name == "adamw":
            _train_step(fused, torch.optim.AdamW(fused.learnable_parameters(), lr=0.05), _images(seed, dtype))
        elif name in ("fused_adamw", "fused_sgd"):
            _fused_step(fused, torch.optim.AdamW if name == "fused_adamw" else torch.optim.SGD, seed)
        elif name == "data_write":
            target.data.add_(noise)
        elif name == "data_assign":  # a new storage behind the same Parameter object
            target.data = target.data + noise
        elif name == "no_grad_copy":
            with torch.no_grad():
                target.copy_(noise)
        elif name in ("load", "load_assign"):
            fused.load_state_dict(_perturbed(fused, seed), strict=False, assign=name == "load_assign")
        elif name == "functional_call":
            params = _perturbed(fused, seed)
        elif name == "bf16_forward":
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                fused(_images(seed, dtype))
        elif name == "inference_forward":  # a cache of inference tensors, then used outside inference mode
            with torch.inference_mode():
                fused(_images(seed, dtype))
        elif name == "dtype":
            dtype = torch.float64 if dtype == torch.float32 else torch.float32
            fused.double() if dtype == torch.float64 else fused.float()
        elif name == "replace_submodule":
            _replace_submodule(fused, seed)
        else:  # "reregister"
            _reregister(fused, seed)
        _assert_fused_equals_reference(fused, reference, _images(seed, dtype), params)


def test_a_tensor_reshaped_out_of_its_run_is_rebuilt_not_reused(cached, monkeypatch):
    """The reuse check joins like-shaped tensors with one ``cat`` per run; a tensor that no longer fits its
    run makes that ``cat`` raise, which must count as a change: a rebuild, neither an error nor reuse."""
    _, fused, _ = cached
    group = fused.mlp_groups[0]
    bias = group.experts[1].conv.bias
    bias.data = bias.data.view(-1, 1)  # (d,) -> (d, 1): the same values, a shape no 1-d run takes
    rebuilt = object()  # the real rebuild would fail on the odd shape: stand in for it
    monkeypatch.setattr(group, "_build_fused_weights", lambda: rebuilt)
    with torch.no_grad():
        assert group.fused_weights() is rebuilt


def _same_weights(got, expected) -> bool:
    """Whether two `FusedWeights` (or fields of them: tensors, tuples of tensors, None) hold equal values."""
    if isinstance(got, tuple):
        return len(got) == len(expected) and all(map(_same_weights, got, expected))
    return got is expected is None or torch.equal(got, expected)


def test_a_copy_sharing_the_groups_dict_checks_its_own_submodules(cached):
    """A shallow copy (as DataParallel's replicas are made) shares the group's cache and walk record; with
    other experts of its own it must derive its own weights, not serve the group's."""
    _, fused, _ = cached
    group = fused.mlp_groups[0]
    replica = copy.copy(group)
    experts = copy.deepcopy(group.experts)
    with torch.no_grad():
        for p in experts.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(3)))
        replica._modules = {**group._modules, "experts": experts}
        assert _same_weights(replica.fused_weights(), replica._build_fused_weights())
        assert _same_weights(group.fused_weights(), group._build_fused_weights())


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
