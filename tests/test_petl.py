"""The comparison methods (model.method): identity at init, hand-checked forms, gradients, checkpoints."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from auformer.config import load_config
from auformer.errors import AUFormerError
from auformer.model import build_model
from auformer.model.checkpoint import load_checkpoint, save_checkpoint
from auformer.model.petl import LORA_TARGETS, METHODS, check_lora_targets

TINY = dict(
    backbone="vit_tiny_patch16_224",
    backbone_weights="random",
    img_size=32,
    backbone_kwargs={"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
)
IMAGES = torch.randn(2, 3, 32, 32)


def _build(method: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(3, method=method, **TINY, **options).eval()


def _frozen_vit_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The plain timm forward of the backbone, then the model's head: what every zero-initialised method must equal."""
    vit = model.backbone
    return model.head(vit.forward_head(vit.forward_features(images), pre_logits=True))


def _perturb(model: torch.nn.Module) -> None:
    """Move every learnable tensor off its (often zero) init, so each branch really contributes."""
    with torch.no_grad():
        for param in model.learnable_parameters():
            param.add_(0.1 * torch.randn_like(param))


@pytest.mark.parametrize("method", [m for m in METHODS if m != "vpt"])
def test_untrained_method_is_the_frozen_vit(method):
    model = _build(method)
    torch.testing.assert_close(model(IMAGES).logits, _frozen_vit_logits(model, IMAGES))


# auformer is covered in test_model.py (its last block's CA q/k reach only patch tokens, which the CLS head never reads).
@pytest.mark.parametrize("method", [m for m in METHODS if m != "auformer"])
def test_every_learnable_parameter_gets_a_gradient_and_the_backbone_stays_frozen(method):
    model = _build(method)
    _perturb(model)
    model(IMAGES).logits.sum().backward()
    learnable = dict((name, p) for name, p in model.named_parameters() if p.requires_grad)
    assert [name for name, p in learnable.items() if p.grad is None or not p.grad.abs().sum() > 0] == []
    backbone_learnable = [name for name in learnable if name.startswith("backbone.")]
    assert bool(backbone_learnable) == (method == "full-finetune")


def test_learnable_parameter_counts_by_hand():
    dim, depth, heads = 32, 2, 3 * 32 + 3  # width, blocks, main head (D x 3 + bias)
    bottleneck = dim * 5 + 5 + 5 * dim + dim  # Linear(D, 5) and Linear(5, D) with biases

    def learnable(method: str, **options) -> int:
        return sum(p.numel() for p in _build(method, **options).learnable_parameters())

    assert learnable("linear") == heads
    assert learnable("adapter", adapter_bottleneck=5) == heads + depth * 2 * bottleneck  # after MHSA and after MLP
    assert learnable("adaptformer", adapter_bottleneck=5) == heads + depth * bottleneck  # beside the MLP only
    assert learnable("lora", lora_rank=4) == heads + depth * 2 * (4 * dim + dim * 4)  # q and v
    assert learnable("lora", lora_rank=4, lora_targets=["q", "k", "v"]) == heads + depth * 3 * (4 * dim + dim * 4)
    assert learnable("vpt", vpt_prompts=7) == heads + depth * 7 * dim
    # Convpass at its published width d=8: down D->8, 3x3 conv 8->8, up 8->D, with biases, beside MHSA and MLP.
    convpass = dim * 8 + 8 + 8 * 8 * 9 + 8 + 8 * dim + dim
    assert learnable("convpass", d=8) == heads + depth * 2 * convpass
    full = sum(p.numel() for p in _build("linear").backbone.parameters())
    assert learnable("full-finetune") == heads + full


class _Houlsby(torch.nn.Module):
    """``h -> h + Up(GELU(Down(h)))`` written out from an adapter's weights: Houlsby's adapter with its own skip."""

    def __init__(self, sublayer: torch.nn.Module, adapter: torch.nn.Module) -> None:
        super().__init__()
        self.sublayer, self.adapter = sublayer, adapter

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:  # kwargs: timm's attn_mask for attention
        h = self.sublayer(x, **kwargs)
        return h + self.adapter.up(F.gelu(self.adapter.down(h), approximate="tanh"))


def test_adapter_is_houlsbys_sequential_adapter_inside_timms_own_blocks():
    """Replacing each block's attn and mlp by ``adapter(sublayer(.))`` in timm's own Block forward gives our output:
    the adapter transforms the sublayer's output before the residual add, after MHSA and after the MLP."""
    model = _build("adapter", adapter_bottleneck=6)
    _perturb(model)
    expected = _build("linear")
    expected.load_state_dict(model.state_dict(), strict=False)  # same backbone and head
    for block, attn_adapter, mlp_adapter in zip(expected.backbone.blocks, model.attn_groups, model.mlp_groups):
        block.attn, block.mlp = _Houlsby(block.attn, attn_adapter), _Houlsby(block.mlp, mlp_adapter)
    torch.testing.assert_close(model(IMAGES).logits, _frozen_vit_logits(expected, IMAGES))
    # ... and it is not the parallel form on the sublayer's input (what `adapter` used to be).
    assert not torch.allclose(model(IMAGES).logits, _build("linear")(IMAGES).logits)


def test_adaptformer_reads_the_unnormalised_stream_beside_the_mlp():
    """AdaptFormer: X = X' + MLP(LN2(X')) + s * Up(ReLU(Down(X'))), the bottleneck fed X' itself, not LN2(X')."""
    model = _build("adaptformer", adapter_bottleneck=6, adapter_scale=0.3)
    _perturb(model)
    vit = model.backbone
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(IMAGES)))
    for block, adapter in zip(vit.blocks, model.mlp_groups):
        x = x + block.attn(block.norm1(x))
        x = x + block.mlp(block.norm2(x)) + 0.3 * adapter.up(torch.relu(adapter.down(x)))
    expected = model.head(vit.forward_head(vit.norm(x), pre_logits=True))
    torch.testing.assert_close(model(IMAGES).logits, expected)
    assert model.mlp_groups[0].dropout.p == 0.1  # AdaptFormer's bottleneck dropout (model.dropout)


def test_full_finetune_trains_the_backbone_in_train_mode_with_drop_path():
    model = _build("full-finetune", drop_path=0.5)
    images = torch.randn(8, 3, 32, 32)
    assert model.backbone.blocks[-1].drop_path1.drop_prob == 0.5  # timm's rule: rising linearly to the last block
    model.train()
    assert model.backbone.training
    assert not torch.allclose(model(images).logits, model(images).logits)  # drop-path is on
    model.eval()
    torch.testing.assert_close(model(images).logits, model(images).logits)
    default = build_model(3, method="full-finetune", **TINY).backbone.blocks[-1].drop_path1.drop_prob
    assert default == pytest.approx(0.1)
    conflicting = {**TINY, "backbone_kwargs": {**TINY["backbone_kwargs"], "drop_path_rate": 0.2}}
    with pytest.raises(AUFormerError, match="must not set drop_path_rate for full-finetune: set drop_path"):
        build_model(3, method="full-finetune", **conflicting)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "full-finetune"])
def test_a_frozen_backbone_stays_in_eval_mode_and_deterministic(method):
    """Frozen backbones ignore train(): their drop-path and dropout (here 0.5 each) stay off."""
    torch.manual_seed(0)
    backbone_kwargs = {**TINY["backbone_kwargs"], "drop_path_rate": 0.5, "proj_drop_rate": 0.5}
    model = build_model(3, method=method, dropout=0.0, **{**TINY, "backbone_kwargs": backbone_kwargs})  # no own dropout
    _perturb(model)
    model.train()
    assert not model.backbone.training and model.attn_groups.training
    torch.testing.assert_close(model(IMAGES).logits, model(IMAGES).logits)


SUBSETS = [list(s) for n in (1, 2, 3) for s in itertools.combinations(LORA_TARGETS, n)]


@pytest.mark.parametrize("targets", SUBSETS, ids="".join)
def test_lora_equals_merged_qkv_weights(targets):
    """Hooked low-rank updates == the frozen qkv weight plus (alpha/r) B_t A_t in the rows of each target t and
    nothing elsewhere (LoRA's merged form), for every subset of q, k, v."""
    model = _build("lora", lora_rank=2, lora_alpha=6.0, lora_targets=targets[::-1])  # any order: stored in q, k, v order
    _perturb(model)
    expected_model = _build("linear")
    expected_model.head.load_state_dict(model.head.state_dict())
    lora = model.lora
    with torch.no_grad():
        for layer, block in enumerate(expected_model.backbone.blocks):
            deltas = dict(zip(targets, (up @ down for up, down in zip(lora.up[layer], lora.down[layer]))))  # (D, D) each
            rows = [deltas.get(t, torch.zeros(32, 32)) for t in LORA_TARGETS]
            block.attn.qkv.weight += 3.0 * torch.cat(rows)
    torch.testing.assert_close(model(IMAGES).logits, expected_model(IMAGES).logits)
    assert model.config["lora_targets"] == targets


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["q", "k", "v", "Q", "qkv", "", "o"]), max_size=4) | st.just("qv"))
def test_lora_targets_are_a_set_of_q_k_v_or_one_line_error(targets):
    valid = isinstance(targets, list) and targets and len(set(targets)) == len(targets) and set(targets) <= {"q", "k", "v"}
    if valid:
        assert check_lora_targets(targets) == tuple(t for t in LORA_TARGETS if t in targets)
    else:
        with pytest.raises(AUFormerError, match=r"^config model.lora_targets: .* distinct entries from q, k, v$"):
            check_lora_targets(targets, "config model.lora_targets")


def test_config_lora_targets_default_and_validation():
    assert load_config("synthetic").model.lora_targets == ["q", "v"]  # the LoRA paper's
    assert load_config("synthetic", ["model.lora_targets=[k, q]"]).model.lora_targets == ["k", "q"]
    with pytest.raises(AUFormerError, match="config model.lora_targets: \\['q', 'q'\\]: the values must differ"):
        load_config("synthetic", ["model.lora_targets=[q, q]"])
    with pytest.raises(AUFormerError, match="config model.drop_path: 1.0 must be in"):
        load_config("synthetic", ["model.drop_path=1.0"])


def test_vpt_equals_prompts_around_timm_blocks():
    """Deep VPT in our loop == timm's own Block forward on [CLS, prompts_l, patches], prompts dropped after each block."""
    model = _build("vpt", vpt_prompts=3)
    vit, prompts = model.backbone, model.prompts.prompts  # (L, P, D)
    x = vit.norm_pre(vit._pos_embed(vit.patch_embed(IMAGES)))
    for layer, block in enumerate(vit.blocks):
        x = block(torch.cat([x[:, :1], prompts[layer].expand(2, -1, -1), x[:, 1:]], dim=1))
        x = torch.cat([x[:, :1], x[:, 4:]], dim=1)
    expected = model.head(vit.forward_head(vit.norm(x), pre_logits=True))
    torch.testing.assert_close(model(IMAGES).logits, expected)


def test_convpass_is_auformer_with_one_plain_expert_and_no_carry():
    convpass = _build("convpass")
    _perturb(convpass)
    plain = _build("auformer", collaborate=False, use_mrf=False, use_ca=False, aux_head=False)
    assert plain.load_state_dict(convpass.state_dict()) is not None
    torch.testing.assert_close(convpass(IMAGES).logits, plain(IMAGES).logits)
    assert convpass(IMAGES).aux_logits is None


@pytest.mark.parametrize(
    "method, options",
    [("full-finetune", {}), ("lora", {"lora_targets": ["q", "k"]}), ("vpt", {}), ("adapter", {}), ("adaptformer", {})],
)
def test_checkpoint_round_trip(method, options, tmp_path):
    model = _build(method, **options)
    _perturb(model)
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.method == method
    torch.testing.assert_close(loaded(IMAGES).logits, model(IMAGES).logits)


def test_bad_method_and_options_fail_in_one_line():
    with pytest.raises(ValueError, match="method must be one of auformer, full-finetune"):
        build_model(3, method="prefix", **TINY)
    with pytest.raises(ValueError, match="lora_rank must be a positive integer, got 0"):
        build_model(3, method="lora", lora_rank=0, **TINY)


def test_method_lists_agree():
    """cli and config keep their own copy of the method names (cheap --help, validation); they must match petl's."""
    from auformer.cli import flags
    from auformer.config import rules

    assert flags.METHODS == METHODS == rules._CHOICES[("model", "method")]
