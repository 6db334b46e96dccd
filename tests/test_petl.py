"""The comparison methods (model.method): identity at init, hand-checked forms, gradients, checkpoints."""

from __future__ import annotations

import pytest
import torch

from auformer.model import build_model
from auformer.model.checkpoint import load_checkpoint, save_checkpoint
from auformer.model.petl import METHODS

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

    def learnable(method: str, **options) -> int:
        return sum(p.numel() for p in _build(method, **options).learnable_parameters())

    assert learnable("linear") == heads
    assert learnable("adapter", adapter_bottleneck=5) == heads + depth * (dim * 5 + 5 + 5 * dim + dim)
    assert learnable("lora", lora_rank=4) == heads + depth * 2 * (4 * dim + dim * 4)
    assert learnable("vpt", vpt_prompts=7) == heads + depth * 7 * dim
    full = sum(p.numel() for p in _build("linear").backbone.parameters())
    assert learnable("full-finetune") == heads + full


def test_lora_equals_merged_qkv_weights():
    """Hooked low-rank updates == the frozen qkv weight plus (alpha/r) [B_q A_q; 0; B_v A_v] (LoRA's merged form)."""
    model = _build("lora", lora_rank=2, lora_alpha=6.0)
    _perturb(model)
    expected_model = _build("linear")
    expected_model.head.load_state_dict(model.head.state_dict())
    lora = model.lora
    with torch.no_grad():
        for layer, block in enumerate(expected_model.backbone.blocks):
            delta_q = lora.up[layer, 0] @ lora.down[layer, 0]  # (D, D)
            delta_v = lora.up[layer, 1] @ lora.down[layer, 1]
            block.attn.qkv.weight += 3.0 * torch.cat([delta_q, torch.zeros_like(delta_q), delta_v])
    torch.testing.assert_close(model(IMAGES).logits, expected_model(IMAGES).logits)


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


@pytest.mark.parametrize("method", ["full-finetune", "lora", "vpt"])
def test_checkpoint_round_trip(method, tmp_path):
    model = _build(method)
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
    from auformer import cli, config

    assert cli.METHODS == METHODS == config._CHOICES[("model", "method")]
