"""ONNX Runtime inference (`--runtime onnxruntime`): fp32 and int8 exports agree with PyTorch, and
an ONNX file without the AU list and thresholds it needs is refused."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import auformer
import auformer.export
from auformer.aus import au_columns
from auformer.cli import main
from auformer.config.presets import load_config
from auformer.data.synthetic import SYNTHETIC_AUS, generate_synthetic
from auformer.detect import Detector
from auformer.detect.runtime import METADATA_KEY, OnnxRuntimeModel
from auformer.engine.build import model_from_config
from auformer.errors import AUFormerError
from auformer.export import export_model
from auformer.metrics import au_metrics

THRESHOLDS = {"AU12": 0.3}  # tuned for AU12 (train.threshold_search); the others 0.5
HEAD_STD = 0.065  # the head weights' spread after the default synthetic run (measured): probabilities away from 0.5


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The synthetic preset's model (packaged backbone, spread-out head), its fp32 and int8 exports."""
    torch.manual_seed(0)
    model = model_from_config(load_config("synthetic"), list(SYNTHETIC_AUS), "synthetic")
    torch.nn.init.normal_(model.head.weight, std=HEAD_STD)
    folder = tmp_path_factory.mktemp("synthetic")
    checkpoint = folder / "model"
    thresholds = {column: THRESHOLDS.get(column, 0.5) for column in au_columns(SYNTHETIC_AUS)}
    auformer.save_checkpoint(model, checkpoint, extra={"dataset": "synthetic", "resize_size": 64, "thresholds": thresholds})
    return checkpoint, export_model(checkpoint, folder), export_model(checkpoint, folder, quantize="int8")


@pytest.fixture(scope="module")
def faces() -> tuple[list[np.ndarray], np.ndarray]:
    """Synthetic test faces (uint8 64 px crops) and their AU labels."""
    data = generate_synthetic(num_images=160, size=64, seed=5)
    return list(data.images), data.labels


@pytest.mark.parametrize(("which", "tolerance"), [(1, 1e-4), (2, 0.02)])
def test_onnxruntime_detector_agrees_with_pytorch(synthetic, faces, which, tolerance):
    crops, labels = faces
    reference = Detector(synthetic[0], face_detector="none", batch_size=64)
    onnx_detector = Detector(synthetic[which], face_detector="none", batch_size=64, runtime="onnxruntime")
    expected, actual = reference.predict_crops(crops), onnx_detector.predict_crops(crops)
    print(f"max |ONNX - PyTorch| {np.abs(actual - expected).max():.2e}, mean {np.abs(actual - expected).mean():.2e}")
    assert np.abs(actual - expected).max() <= tolerance
    assert onnx_detector.au_columns == reference.au_columns and onnx_detector.synthetic
    f1 = [au_metrics(p, labels, SYNTHETIC_AUS)["mean_f1"] for p in (expected, actual)]
    assert abs(f1[0] - f1[1]) <= 0.01
    expected_thresholds = [THRESHOLDS.get(column, 0.5) for column in onnx_detector.au_columns]
    np.testing.assert_allclose(onnx_detector.thresholds, expected_thresholds)  # carried by the file
    assert Detector(synthetic[which], face_detector="none", threshold=0.6, runtime="onnxruntime").thresholds.max() == 0.6


def test_int8_file_is_smaller(synthetic):
    assert synthetic[2].name == "model.int8.onnx"
    assert (
        synthetic[2].stat().st_size < 0.8 * synthetic[1].stat().st_size
    )  # 0.74 measured: first block, convs, embeddings stay fp32


def test_int8_export_past_its_bound_is_refused_with_advice(synthetic, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(auformer.export, "INT8_TOLERANCE", 1e-9)  # as for a model that int8 rounds too far
    filters = list(logging.getLogger().filters)
    with pytest.raises(AUFormerError, match=r"model\.int8\.onnx: exported model differs .* without --quantize \(fp32\)$"):
        export_model(synthetic[0], tmp_path, quantize="int8")
    assert list(tmp_path.iterdir()) == []  # nothing written
    assert not [r for r in caplog.records if "pre-processing" in r.getMessage()]  # the quantiser's advice is dropped
    assert logging.getLogger().filters == filters  # and only while it runs


def _without(path: Path, key: str | None, out: Path) -> Path:
    """A copy of the exported ``path`` with ``key`` dropped from its metadata (None: no metadata at all)."""
    graph = onnx.load(str(path))
    meta = json.loads(graph.metadata_props[0].value)
    del graph.metadata_props[:]
    if key is not None:
        onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps({k: v for k, v in meta.items() if k != key})})
    onnx.save(graph, str(out))
    return out


@pytest.mark.parametrize(
    ("key", "message"), [(None, "no auformer metadata"), ("aus", "lacks aus"), ("thresholds", "lacks thresholds")]
)
def test_export_without_aus_or_thresholds_is_refused(synthetic, tmp_path, key, message):
    with pytest.raises(AUFormerError, match=message):
        OnnxRuntimeModel(_without(synthetic[1], key, tmp_path / "bare.onnx"))


def test_not_an_onnx_file_is_refused(synthetic, tmp_path):
    with pytest.raises(AUFormerError, match="needs an .onnx file"):
        Detector(synthetic[0], runtime="onnxruntime")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(AUFormerError, match="not a readable ONNX model"):
        OnnxRuntimeModel(tmp_path / "junk.onnx")


def test_onnxruntime_missing_is_one_clear_line(synthetic, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(AUFormerError, match=r"needs ONNX Runtime: pip install 'auformer\[export\]'"):
        OnnxRuntimeModel(synthetic[1])


def test_cli_detect_with_onnxruntime(synthetic, faces, tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "faces"
    images.mkdir()
    for index, crop in enumerate(faces[0][:4]):
        Image.fromarray(crop).save(images / f"{index}.png")
    model = str(synthetic[2])
    args = ["detect", str(images), "--checkpoint", model, "--runtime", "onnxruntime", "--face-detector", "none"]
    assert main([*args, "--out", str(tmp_path / "out")]) == 0
    assert main([*args, "--out", str(tmp_path / "out"), "--resume"]) == 0  # the .onnx file's hash is the identity
    table = (tmp_path / "out" / "images.csv").read_text().splitlines()
    assert len(table) == 5 and "AU12_c" in table[0]
