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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import auformer
import auformer.export
from auformer.aus import au_columns
from auformer.cli import main
from auformer.config.presets import load_config
from auformer.data.synthetic import SYNTHETIC_AUS, generate_synthetic
from auformer.detect import Detector
from auformer.detect.runtime import METADATA_KEY, REQUIRED, OnnxRuntimeModel
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


def _metadata(path: Path) -> dict:
    return json.loads(onnx.load(str(path)).metadata_props[0].value)


def _with_metadata(path: Path, meta: dict | None, out: Path, graph: onnx.ModelProto | None = None) -> Path:
    """A copy of the exported ``path`` (or ``graph``) with ``meta`` as its metadata (None: no metadata at all)."""
    graph = graph or onnx.load(str(path))
    del graph.metadata_props[:]
    if meta is not None:
        onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(meta)})
    onnx.save(graph, str(out))
    return out


def _without(path: Path, key: str | None, out: Path) -> Path:
    """A copy of the exported ``path`` with ``key`` dropped from its metadata (None: no metadata at all)."""
    meta = None if key is None else {k: v for k, v in _metadata(path).items() if k != key}
    return _with_metadata(path, meta, out)


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"thresholds": 5}, "'thresholds': 5 is not a valid list"),
        ({"thresholds": [True] * 12}, "'thresholds': .* is not a valid list"),
        ({"aus": [1, 1, *SYNTHETIC_AUS[2:]]}, "'aus': .* the values must differ"),
        ({"outputs": 3}, "'outputs': 3 is not a valid list"),
        ({"outputs": ["probabilities"] * 2}, "'outputs': .* the values must differ"),
        ({"input_size": "64"}, "'input_size': '64' is not a valid int"),
        ({"input_size": 64.5}, "'input_size': 64.5 is not a valid int"),
        ({"mean": [0.5, 0.5]}, "'mean': .* has 2 values; exactly 3 allowed"),
        ({"std": [0, 0, 0]}, r"'std': \[0, 0, 0\]: 0 must be in \(0, 1\]"),
        ({"resize_size": "x"}, "'resize_size': 'x' is not a valid int"),
        ({"resize_size": 10**7}, "'resize_size': 10000000 must be in"),
        ({"aus": list(SYNTHETIC_AUS[:-1]), "thresholds": [0.5] * (len(SYNTHETIC_AUS) - 1)}, "graph 'probabilities' is"),
        ({"outputs": ["probabilities", "intensity"]}, "graph 'intensity' is nothing"),
        ({"input_size": 32}, "graph 'images' is tensor"),
    ],
)
def test_hostile_metadata_is_one_line_naming_the_file(synthetic, tmp_path, change, message):
    """Each was a traceback or a silently accepted file (duplicate AUs or outputs, True/False as thresholds)."""
    path = _with_metadata(synthetic[1], {**_metadata(synthetic[1]), **change}, tmp_path / "hostile.onnx")
    with pytest.raises(AUFormerError, match=f"^{path}: ONNX .*{message}"):
        Detector(path, face_detector="none", runtime="onnxruntime")


HOSTILE_VALUES = st.sampled_from(
    [None, True, 0, -1, 1, 3, 32, 64, 10**9, 0.5, 1.5, float("nan"), float("inf"), "", "64", "probabilities", [], [0.5],
     [0.5] * 3, [0.5] * 12, [0.0] * 3, [1, 1], [99], list(SYNTHETIC_AUS), list(SYNTHETIC_AUS)[:-1], ["intensity"],
     ["probabilities", "intensity"], {}, {"a": 1}, [[1]], "é" * 500, list(range(1000))]
)  # fmt: skip


@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.dictionaries(st.sampled_from([*REQUIRED, "dataset", "quantize"]), HOSTILE_VALUES, min_size=1, max_size=3))
def test_mutated_metadata_is_refused_in_one_line_or_runs_right(synthetic, faces, tmp_path_factory, change):
    """Whatever the metadata says, the file is refused naming itself, or every AU gets a probability and a threshold."""
    path = _with_metadata(synthetic[1], {**_metadata(synthetic[1]), **change}, tmp_path_factory.mktemp("m") / "m.onnx")
    try:
        detector = Detector(path, face_detector="none", runtime="onnxruntime")
        probabilities = detector.predict_crops(faces[0][:2])
    except AUFormerError as error:
        assert str(error).startswith(f"{path}: ") and "\n" not in str(error)
        return
    assert probabilities.shape == (2, len(detector.au_columns)) and ((0 <= probabilities) & (probabilities <= 1)).all()
    assert (
        detector.thresholds.shape == (len(detector.au_columns),)
        and ((0 <= detector.thresholds) & (detector.thresholds <= 1)).all()
    )


def _graph(body: list, width: int, batch: str | int = "batch") -> onnx.ModelProto:
    """A stand-in exported graph: ``images`` (B, 3, 64, 64) -> ``probabilities`` declared (B, ``width``), computed by ``body``."""
    images = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [batch, 3, 64, 64])
    output = onnx.helper.make_tensor_value_info("probabilities", onnx.TensorProto.FLOAT, [batch, width])
    graph = onnx.helper.make_graph(body, "stand-in", [images], [output])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])


def _first(count: int) -> list:
    """Nodes: the first ``count`` pixels of each image (normalised: outside [0, 1]) as ``probabilities``."""
    constant = onnx.helper.make_tensor("ends", onnx.TensorProto.INT64, [1], [count])
    return [
        onnx.helper.make_node("Flatten", ["images"], ["flat"]),
        onnx.helper.make_node("Constant", [], ["starts"], value=onnx.helper.make_tensor("s", onnx.TensorProto.INT64, [1], [0])),
        onnx.helper.make_node("Constant", [], ["ends"], value=constant),
        onnx.helper.make_node("Constant", [], ["axes"], value=onnx.helper.make_tensor("a", onnx.TensorProto.INT64, [1], [1])),
        onnx.helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["probabilities"]),
    ]


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        (_graph(_first(12), 12, batch=2), r"graph 'images' is tensor\(float\) \[2, 3, 64, 64\]"),  # fixed batch
        (_graph(_first(5), 12), r"graph 'probabilities' is tensor\(float\) \['batch', None\]"),  # computes (B, 5)
        (_graph([*_first(12)[:-1], onnx.helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["raw"]),
                 onnx.helper.make_node("Abs", ["raw"], ["big"]), onnx.helper.make_node("Add", ["big", "big"], ["probabilities"])], 12),
         r"output 'probabilities' is not 2 x 12 values in \[0, 1\]"),
    ],
)  # fmt: skip
def test_a_graph_unlike_its_metadata_is_refused(synthetic, faces, tmp_path, graph, message):
    """The graph's declared shapes are checked when it is opened, the values it computes when it runs."""
    path = _with_metadata(synthetic[1], _metadata(synthetic[1]), tmp_path / "graph.onnx", graph)
    with pytest.raises(AUFormerError, match=f"^{path}: ONNX {message}"):
        Detector(path, face_detector="none", runtime="onnxruntime").predict_crops(faces[0][:2])


@pytest.mark.parametrize(
    ("options", "flags"),
    [({"device": "cuda"}, "--device cuda"), ({"amp": "bf16"}, "--amp bf16"),
     ({"backbone_weights": "vit.safetensors", "device": "cuda:0"}, "--device cuda:0, --backbone-weights")],
)  # fmt: skip
def test_torch_only_options_are_refused_not_ignored(synthetic, options, flags):
    """They were silently ignored (bf16, another backbone file) or failed late (a CUDA batch pinned for a CPU session)."""
    with pytest.raises(AUFormerError, match=f"^{synthetic[1]}: --runtime onnxruntime .*; {flags} apply to --runtime torch only$"):
        Detector(synthetic[1], face_detector="none", runtime="onnxruntime", **options)


def _tensors(graph: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The exported graph's initializers and its Constant nodes' tensors."""
    constants = [a.t for node in graph.graph.node if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
    return [*graph.graph.initializer, *constants]


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data(), st.sampled_from(["../secret.bin", "/tmp/secret.bin", "data.bin", "link.bin", "hard.bin"]))
def test_a_tensor_in_another_file_is_refused_before_anything_is_read(synthetic, tmp_path_factory, data, location):
    """Such a file named a path ONNX Runtime read: on 1.18 (this project's lowest) one outside the folder
    (``../secret.bin``, a link out); on 1.32 still a hard link to a file elsewhere."""
    folder = tmp_path_factory.mktemp("external")
    (folder / "models").mkdir()
    secret = folder / "secret.bin"
    secret.write_bytes(b"\0" * (1 << 20))
    (folder / "models" / "link.bin").symlink_to(secret)
    (folder / "models" / "hard.bin").hardlink_to(secret)
    (folder / "models" / "data.bin").write_bytes(b"\0" * (1 << 20))
    graph = onnx.load(str(synthetic[1]))
    tensor = data.draw(st.sampled_from(_tensors(graph)))
    onnx.external_data_helper.set_external_data(tensor, location, length=len(tensor.raw_data))
    tensor.ClearField("raw_data")
    path = _with_metadata(synthetic[1], _metadata(synthetic[1]), folder / "models" / "model.onnx", graph)
    with pytest.raises(AUFormerError, match=f"^{path}: tensor '.*' keeps its data in another file"):
        Detector(path, face_detector="none", runtime="onnxruntime")
