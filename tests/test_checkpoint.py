"""Adapter checkpoints: round trips, what is (not) stored, moved backbones, mismatches."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from auformer import __version__, load_checkpoint, save_checkpoint
from auformer.model import build_model
from auformer.model.checkpoint import load_adapter_weights
from conftest import TINY_BACKBONE


def _trained_like(model):
    """Non-zero experts/heads, as after training, so a bad load would show in the outputs."""
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.learnable_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model.eval()


def _backbone_file(tmp_path, tiny_backbone_kwargs) -> str:
    path = tmp_path / "backbone.safetensors"
    torch.manual_seed(5)
    save_file(timm.create_model(TINY_BACKBONE, num_classes=0, img_size=32, **tiny_backbone_kwargs).state_dict(), str(path))
    return str(path)


def test_round_trip_with_random_backbone_stores_the_backbone(tmp_path, tiny_model_kwargs):
    model = _trained_like(build_model(3, aus=[1, 2, 4], moke="fused", **tiny_model_kwargs))
    weights_path = save_checkpoint(model, tmp_path / "run" / "best", extra={"epoch": 3})
    assert weights_path == tmp_path / "run" / "best.safetensors"
    meta = json.loads((tmp_path / "run" / "best.json").read_text())
    assert meta["aus"] == [1, 2, 4] and meta["extra"] == {"epoch": 3} and meta["auformer_version"] == __version__
    assert meta["backbone"] == {"name": TINY_BACKBONE, "weights": "random", "sha256": None, "included": True}
    with safe_open(str(weights_path), framework="pt") as file:
        assert any(k.startswith("backbone.") for k in file.keys())
        assert json.loads(file.metadata()["auformer"]) == meta  # self-describing without the JSON
    loaded = load_checkpoint(tmp_path / "run" / "best.safetensors")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected, actual = model(images), loaded(images)
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(actual.aux_logits, expected.aux_logits, rtol=0, atol=0)
    assert loaded.config == model.config and loaded.aus == [1, 2, 4]
    assert not list(tmp_path.glob("run/*.tmp")) and not list(tmp_path.glob("run/.*"))  # no temp files left


def test_checkpoint_from_before_random_was_named_still_loads(tmp_path, tiny_model_kwargs):
    """Wave-1 checkpoints recorded a random (stored) backbone as null; they load as 'random'."""
    model = _trained_like(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs)).eval()
    save_checkpoint(model, tmp_path / "old")
    meta = json.loads((tmp_path / "old.json").read_text())
    meta["config"]["backbone_weights"] = meta["backbone"]["weights"] = None
    (tmp_path / "old.json").write_text(json.dumps(meta))
    loaded = load_checkpoint(tmp_path / "old")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    assert loaded.config["backbone_weights"] == "random"


def test_backbone_file_is_referenced_not_copied(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs):
    backbone_path = _backbone_file(tmp_path, tiny_backbone_kwargs)
    model = _trained_like(build_model(2, **(tiny_model_kwargs | {"backbone_weights": backbone_path})))
    weights_path = save_checkpoint(model, tmp_path / "adapters")
    with safe_open(str(weights_path), framework="pt") as file:
        assert set(file.keys()) == set(model.learnable_state_dict())
    meta = json.loads((tmp_path / "adapters.json").read_text())
    assert meta["backbone"]["weights"] == backbone_path and len(meta["backbone"]["sha256"]) == 64
    assert not meta["backbone"]["included"]
    loaded = load_checkpoint(tmp_path / "adapters")
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)


def test_moved_backbone_needs_the_override(tmp_path, tiny_model_kwargs, tiny_backbone_kwargs):
    backbone_path = _backbone_file(tmp_path, tiny_backbone_kwargs)
    model = _trained_like(build_model(2, **(tiny_model_kwargs | {"backbone_weights": backbone_path})))
    save_checkpoint(model, tmp_path / "adapters")
    moved = tmp_path / "moved.safetensors"
    (tmp_path / "backbone.safetensors").rename(moved)
    with pytest.raises(FileNotFoundError, match="backbone weights .* not found"):
        load_checkpoint(tmp_path / "adapters")
    loaded = load_checkpoint(tmp_path / "adapters.json", backbone_weights=str(moved))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images).logits, model(images).logits, rtol=0, atol=0)
    save_file({k: v + 1 for k, v in loaded.backbone.state_dict().items()}, str(moved))  # other weights
    with pytest.warns(UserWarning, match="differ from the ones the checkpoint was trained with"):
        load_checkpoint(tmp_path / "adapters", backbone_weights=str(moved))


def test_reference_and_fused_share_checkpoints(tmp_path, tiny_model_kwargs):
    fused = _trained_like(build_model(3, moke="fused", dropout=0.0, **tiny_model_kwargs))
    save_checkpoint(fused, tmp_path / "ckpt")
    reference = build_model(3, moke="reference", dropout=0.0, **tiny_model_kwargs).eval()
    load_adapter_weights(reference, tmp_path / "ckpt")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reference(images).logits, fused(images).logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(num_aus=3, aus=[1, 2, 6]), r"adapters are for 3 AUs \[1, 2, 4\]"),
        (dict(num_aus=2, aus=[1, 2]), "adapters are for 3 AUs"),
        (dict(num_aus=3, aus=[1, 2, 4], d=2), "does not fit the model: shape mismatch"),
        (dict(num_aus=3, aus=[1, 2, 4], use_ca=False), "does not fit the model: unexpected"),
        (dict(num_aus=3, aus=[1, 2, 4], backbone="vit_small_patch16_224"), "adapters are for backbone"),
    ],
)
def test_loading_into_another_model_fails_with_one_line(tmp_path, tiny_model_kwargs, options, message):
    save_checkpoint(build_model(3, aus=[1, 2, 4], **tiny_model_kwargs), tmp_path / "ckpt")
    other = build_model(**{**tiny_model_kwargs, **options})
    with pytest.raises(ValueError, match=message) as error:
        load_adapter_weights(other, tmp_path / "ckpt")
    assert "\n" not in str(error.value)


def test_missing_or_foreign_checkpoint_files(tmp_path, tiny_model_kwargs):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nothing")
    (tmp_path / "foreign.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an auformer checkpoint"):
        load_checkpoint(tmp_path / "foreign")
    with pytest.raises(ValueError, match="not JSON-serialisable"):
        save_checkpoint(build_model(2, **tiny_model_kwargs), tmp_path / "x", extra={"tensor": torch.zeros(1)})


def test_vit_base_adapter_file_size_is_about_9_mb():
    """2.21 M float32 learnable values: an adapter file of ~8.9 MB, not the 350 MB of ViT-B."""
    with torch.device("meta"):
        model = build_model(12, backbone_weights="random")
    size_mb = sum(p.numel() * p.element_size() for p in model.learnable_parameters()) / 1e6
    assert 8.5 < size_mb < 9.5


def test_checkpoint_files_get_the_normal_file_mode(tmp_path, tiny_model_kwargs):
    # safetensors' save_file writes private 0600 files; checkpoints must be shareable like any file.
    import os

    from auformer.files import FILE_MODE

    weights = save_checkpoint(build_model(2, aus=[1, 2], **tiny_model_kwargs), tmp_path / "ckpt")
    assert os.stat(weights).st_mode & 0o777 == FILE_MODE
    assert os.stat(weights.with_suffix(".json")).st_mode & 0o777 == FILE_MODE
