"""ONNX / TorchScript export: self-contained files that give PyTorch's probabilities (1e-4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import auformer
from auformer.cli import main
from auformer.errors import AUFormerError
from auformer.export import export_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = auformer.build_model(
        3,
        backbone="vit_tiny_patch16_224",
        backbone_weights="random",
        img_size=32,
        aus=[1, 6, 12],
        backbone_kwargs=dict(patch_size=8, embed_dim=32, depth=2, num_heads=2),
    )
    torch.nn.init.normal_(model.head.weight, std=0.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    auformer.save_checkpoint(model, path)
    return path


def pytorch_probabilities(checkpoint: Path, images: torch.Tensor) -> np.ndarray:
    model = auformer.load_checkpoint(checkpoint).eval()
    with torch.no_grad():
        return torch.sigmoid(model(images).logits).numpy()  # (B, N)


def test_cli_onnx_export_matches_pytorch(checkpoint, tmp_path, capsys):
    assert main(["export", str(checkpoint), "--format", "onnx", "--out", str(tmp_path)]) == 0
    assert f"wrote {tmp_path / 'tiny.onnx'}" in capsys.readouterr().out
    description = json.loads((tmp_path / "tiny.onnx.json").read_text())
    assert description["output"]["columns"] == ["AU01", "AU06", "AU12"] and description["input"]["shape"][1:] == [3, 32, 32]
    images = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(7))  # a batch size not used at export
    session = onnxruntime.InferenceSession(str(tmp_path / "tiny.onnx"), providers=["CPUExecutionProvider"])
    exported = session.run(["probabilities"], {"images": images.numpy()})[0]
    np.testing.assert_allclose(exported, pytorch_probabilities(checkpoint, images), atol=1e-4)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_matches_pytorch(checkpoint, tmp_path):
    path = export_model(checkpoint, tmp_path, "torchscript")
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        exported = torch.jit.load(str(path))(images).numpy()
    np.testing.assert_allclose(exported, pytorch_probabilities(checkpoint, images), atol=1e-4)


def test_unknown_format_is_rejected(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="onnx, torchscript"):
        export_model(checkpoint, tmp_path, "tflite")


def test_an_earlier_export_is_never_replaced(checkpoint, tmp_path, capsys):
    """It was: a second export rewrote tiny.onnx, and a checkpoint named tiny.onnx lost its tiny.onnx.json."""
    first = export_model(checkpoint, tmp_path / "a")
    before = first.read_bytes()
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "a")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == f"error: {first} already exists: remove it or choose another --out (it is never replaced)"
    assert first.read_bytes() == before
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "tiny.onnx.json").write_text("another checkpoint's description\n")  # checkpoint b/tiny.onnx
    with pytest.raises(AUFormerError, match=r"tiny\.onnx\.json already exists"):
        export_model(checkpoint, tmp_path / "b")
    assert sorted(path.name for path in (tmp_path / "b").iterdir()) == ["tiny.onnx.json"]


OUTPUT_NAMES = ["tiny.onnx", "tiny.onnx.json", "tiny.int8.onnx", "tiny.int8.onnx.json", "tiny.pt", "tiny.pt.json"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.sets(st.sampled_from(OUTPUT_NAMES)), st.sampled_from([("onnx", "none"), ("onnx", "int8"), ("torchscript", "none")]))
def test_export_changes_no_file_already_in_out(checkpoint, tmp_path_factory, present, kind):
    """Whatever OUT already holds, an export writes only files that were not there."""
    out = tmp_path_factory.mktemp("out")
    for name in present:
        (out / name).write_text(f"earlier {name}\n")
    try:
        written = export_model(checkpoint, out, kind[0], quantize=kind[1])
    except AUFormerError as error:
        assert "already exists" in str(error) or "int8 rounds" in str(error)
        written = None
    for name in present:
        assert (out / name).read_text() == f"earlier {name}\n"
    new = {path.name for path in out.iterdir()} - present
    assert new == ({written.name, written.name + ".json"} if written else set())
