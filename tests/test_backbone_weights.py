"""Backbone weight files: safetensors, .pth, original-ViT .npz, pos-embed resampling, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import auformer.model.backbone as backbone_module
from auformer.model import build_model
from conftest import TINY_BACKBONE


def _source_vit(tiny_backbone_kwargs: dict, img_size: int = 32) -> torch.nn.Module:
    """A randomly initialised tiny ViT *with* a classifier head, standing in for a pretrained one."""
    torch.manual_seed(123)
    return timm.create_model(TINY_BACKBONE, num_classes=7, img_size=img_size, **tiny_backbone_kwargs)


def _assert_backbone_equals(model, source) -> None:
    source_state = source.state_dict()
    for name, tensor in model.backbone.state_dict().items():
        torch.testing.assert_close(tensor, source_state[name], msg=name)


def _write_jax_npz(vit, path) -> None:
    """Write ``vit`` in the original (JAX) ViT .npz layout, the inverse of timm's ``_load_weights``."""
    sd = {k: v.numpy() for k, v in vit.state_dict().items()}
    dim, heads = vit.embed_dim, vit.blocks[0].attn.num_heads
    arrays = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),  # OIHW -> HWIO
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    for i in range(len(vit.blocks)):
        block, jax = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = jax + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * dim, (j + 1) * dim)
            arrays[f"{mha}{name}/kernel"] = sd[block + "attn.qkv.weight"][rows].T.reshape(dim, heads, dim // heads)
            arrays[f"{mha}{name}/bias"] = sd[block + "attn.qkv.bias"][rows].reshape(heads, dim // heads)
        arrays[mha + "out/kernel"] = sd[block + "attn.proj.weight"].reshape(dim, heads, dim // heads).transpose(1, 2, 0)
        arrays[mha + "out/bias"] = sd[block + "attn.proj.bias"]
        for norm, jax_norm in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            arrays[f"{jax}{jax_norm}/scale"] = sd[f"{block}{norm}.weight"]
            arrays[f"{jax}{jax_norm}/bias"] = sd[f"{block}{norm}.bias"]
        for r in range(2):
            arrays[f"{jax}MlpBlock_3/Dense_{r}/kernel"] = sd[f"{block}mlp.fc{r + 1}.weight"].T
            arrays[f"{jax}MlpBlock_3/Dense_{r}/bias"] = sd[f"{block}mlp.fc{r + 1}.bias"]
    np.savez(path, **arrays)


def test_safetensors_file_loads_and_head_keys_are_ignored(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs):
    source = _source_vit(tiny_backbone_kwargs)
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))  # includes head.weight / head.bias
    model = build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(path)}))
    _assert_backbone_equals(model, source)
    assert model.config["backbone_weights"] == str(path.resolve())
    assert all(not p.requires_grad for p in model.backbone.parameters())


@pytest.mark.parametrize("wrapper", [None, "state_dict", "model"])
def test_pth_file_loads_plain_or_wrapped(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs, wrapper):
    source = _source_vit(tiny_backbone_kwargs)
    path = tmp_path / "vit.pth"
    torch.save(source.state_dict() if wrapper is None else {wrapper: source.state_dict()}, path)
    _assert_backbone_equals(build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(path)})), source)


def test_npz_original_vit_format_loads(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs):
    source = _source_vit(tiny_backbone_kwargs)
    path = tmp_path / "vit.npz"
    _write_jax_npz(source, path)
    _assert_backbone_equals(build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(path)})), source)


def test_position_embeddings_are_resampled_to_another_grid(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs):
    source = _source_vit(tiny_backbone_kwargs, img_size=32)  # 4x4 grid
    path = tmp_path / "vit.safetensors"
    save_file(source.state_dict(), str(path))
    model = build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(path), "img_size": 48}))  # 6x6 grid
    assert model.backbone.pos_embed.shape == (1, 1 + 36, 32)
    torch.testing.assert_close(model.backbone.pos_embed[:, 0], source.pos_embed[:, 0])  # CLS position kept
    torch.testing.assert_close(model.backbone.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert model(torch.randn(1, 3, 48, 48)).logits.shape == (1, 2)


def test_synthetic_alias_resolves_to_the_packaged_asset(tmp_path, monkeypatch, tiny_model_kwargs, tiny_backbone_kwargs):
    asset = tmp_path / "synthetic_vit.safetensors"
    monkeypatch.setattr(backbone_module, "SYNTHETIC_WEIGHTS", asset)
    with pytest.raises(FileNotFoundError, match="synthetic backbone asset is missing"):
        build_model(2, **(tiny_model_kwargs | {"backbone_weights": "synthetic"}))
    source = _source_vit(tiny_backbone_kwargs)
    save_file(source.state_dict(), str(asset))
    model = build_model(2, **(tiny_model_kwargs | {"backbone_weights": "synthetic"}))
    _assert_backbone_equals(model, source)
    assert model.config["backbone_weights"] == "synthetic"


def _edited_file(tmp_path, tiny_backbone_kwargs, edit) -> str:
    state = _source_vit(tiny_backbone_kwargs).state_dict()
    edit(state)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    return str(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("blocks.1.mlp.fc2.bias"), r"missing: blocks\.1\.mlp\.fc2\.bias"),
        (lambda s: s.update({"extra.weight": torch.zeros(2)}), r"unexpected: extra\.weight"),
        (lambda s: s.update({"norm.weight": torch.ones(16)}), r"shape mismatch: norm\.weight \(16,\) vs \(32,\)"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_file_that_does_not_fit_names_file_and_keys(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs, edit, message):
    path = _edited_file(tmp_path, tiny_backbone_kwargs, edit)
    with pytest.raises(ValueError, match=message) as error:
        build_model(2, **(tiny_model_kwargs | {"backbone_weights": path}))
    assert path in str(error.value) and "\n" not in str(error.value)


def test_unusable_files_raise_clear_errors(tmp_path, tiny_model_kwargs):
    with pytest.raises(FileNotFoundError, match="backbone weights file not found"):
        build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(tmp_path / "nope.safetensors")}))
    text = tmp_path / "weights.txt"
    text.write_text("hello")
    with pytest.raises(ValueError, match="unsupported backbone weights format"):
        build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(text)}))
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot read backbone weights"):
        build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(corrupt)}))
    empty_npz = tmp_path / "empty.npz"
    np.savez(empty_npz, something=np.zeros(2))
    with pytest.raises(ValueError, match="not an original-ViT .npz"):
        build_model(2, **(tiny_model_kwargs | {"backbone_weights": str(empty_npz)}))
