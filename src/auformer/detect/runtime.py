"""ONNX Runtime on the CPU: an `auformer export` file as the network behind `Detector` (``--runtime onnxruntime``).

An exported graph alone does not say which AUs its columns are, which thresholds turn
probabilities into occurrences, or how the images must be prepared; `auformer.export` writes
these into the file's metadata (key ``auformer``), and a file without them is refused here
rather than guessed at. The same runtime runs the fp32 and the int8 (``export --quantize int8``)
files of any backbone.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from auformer.aus import INTENSITY_MAX
from auformer.config import FIELD_RULES, Rule, value_problem
from auformer.config.rules import show
from auformer.errors import AUFormerError

RUNTIMES = ("torch", "onnxruntime")
METADATA_KEY = "auformer"  # ONNX metadata_props key holding the JSON below
OUTPUT_KEYS = {"probabilities": "probs", "intensity": "intensity"}  # graph output -> Detector's name
REQUIRED = ("aus", "thresholds", "outputs", "input_size", "mean", "std", "resize_size")
EXPORT_AGAIN = "export it again with `auformer export`"


def _metadata_specs(num_aus: int) -> dict[str, tuple[Any, Rule]]:
    """Metadata key -> (type, rule): the config's own rules for AUs and sizes, one threshold per AU,
    three channels of mean/std (images normalised from [0, 1])."""
    channels = (list[float], Rule(0, 1, length=(3, 3)))
    return {
        "aus": (list[int], FIELD_RULES["data.aus"]),
        "thresholds": (list[float], Rule(0, 1, length=(num_aus, num_aus))),
        "outputs": (list[str], Rule(choices=tuple(OUTPUT_KEYS), length=(1, len(OUTPUT_KEYS)), distinct=True)),
        "input_size": (int, FIELD_RULES["data.img_size"]),
        "resize_size": (int, FIELD_RULES["data.resize_size"]),
        "mean": channels,
        "std": (channels[0], Rule(0, 1, open_low=True, length=(3, 3))),
    }


def read_metadata(path: Path, metadata: dict[str, str]) -> dict:
    """The ``auformer`` metadata of an exported file, checked: AU list, one threshold per AU, outputs, preprocessing."""
    advice = f"{EXPORT_AGAIN} (this version writes the AU list and thresholds into the file)"
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError, RecursionError):
        raise AUFormerError(f"{path}: ONNX file has no auformer metadata (AU list, thresholds); {advice}") from None
    missing = [key for key in REQUIRED if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise AUFormerError(f"{path}: ONNX metadata lacks {', '.join(missing)}; {advice}")
    aus = meta["aus"]
    for key, spec in _metadata_specs(len(aus) if isinstance(aus, list) else 0).items():
        problem = value_problem(meta[key], *spec)
        if problem:
            raise AUFormerError(f"{path}: ONNX metadata '{key}': {problem}")
    if meta["resize_size"] < meta["input_size"]:
        raise AUFormerError(
            f"{path}: ONNX metadata 'resize_size' {meta['resize_size']} is below 'input_size' {meta['input_size']}"
        )
    return meta


def check_graph(path: Path, session: Any, meta: dict) -> None:
    """The graph's input and outputs must be the ones the metadata describes: float ``images``
    ``(B, 3, S, S)`` and each output ``(B, N)``, B free, so that every batch runs and every column is an AU."""
    inputs = session.get_inputs()
    if [node.name for node in inputs] != ["images"]:
        raise AUFormerError(f"{path}: ONNX graph takes {[node.name for node in inputs]}, not one input 'images'; {EXPORT_AGAIN}")
    outputs = {node.name: node for node in session.get_outputs()}
    size, width = meta["input_size"], len(meta["aus"])
    found = [("images", inputs[0], ["batch", 3, size, size])]
    found += [(name, outputs.get(name), ["batch", width]) for name in meta["outputs"]]
    for name, node, shape in found:
        if node is None or node.type != "tensor(float)" or not _fits(node.shape, shape):
            got = "nothing" if node is None else f"{node.type} {node.shape}"
            raise AUFormerError(f"{path}: ONNX graph {name!r} is {got}, its metadata says float {shape}; {EXPORT_AGAIN}")


def _fits(shape: list, expected: list) -> bool:
    """A graph shape (ints, names or None per axis) is ``expected``: the first axis free (not an int), the others equal."""
    return len(shape) == len(expected) and not isinstance(shape[0], int) and list(shape[1:]) == expected[1:]


def _external_tensors(message: Any) -> Iterator[str]:
    """Names of the tensors anywhere in an ONNX proto whose data lies in another file.

    Such a tensor names a path: ONNX Runtime 1.18 (the oldest `auformer[export]` allows) reads ``../x``
    and links out of the model's folder, 1.32 still a hard link to a file elsewhere (both checked). An
    export never has one, so no file with one is opened. Written by hand: onnx's own walk
    (``external_data_helper._get_all_tensors``) is private and skips sparse tensors; this one visits
    every message (initializers, constants, subgraphs).
    """
    from google.protobuf.message import Message
    from onnx import TensorProto

    if isinstance(message, TensorProto) and (message.data_location == TensorProto.EXTERNAL or message.external_data):
        yield message.name
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in [value] if isinstance(value, Message) else value:
                yield from _external_tensors(item)


def cpu_session(path: str | os.PathLike, threads: int | None = None):
    """An ONNX Runtime CPU session on ``threads`` threads (default: torch's count, so both runtimes use the
    same cores) whose threads do not spin between calls.

    ONNX Runtime's threads spin after each call by default, waiting for the next: in detect and live the
    decoding and face-finding threads need those cores (283 portraits on 2 cores: 10.4-10.8 s with spinning,
    9.8-10.0 s without), and a benchmark timing it beside torch would see torch slowed by them.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxRuntimeModel:
    """An exported ``.onnx`` file on ONNX Runtime's CPU provider, with the description `Detector` needs.

    ``threads`` defaults to torch's own thread count, so both runtimes use the same cores.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        if any(importlib.util.find_spec(name) is None for name in ("onnxruntime", "onnx")):
            raise AUFormerError("--runtime onnxruntime needs ONNX Runtime: pip install 'auformer[export]'")
        import onnx

        self.path = Path(path)
        if self.path.suffix != ".onnx" or not self.path.is_file():
            raise AUFormerError(f"{self.path}: --runtime onnxruntime needs an .onnx file written by `auformer export`")
        try:  # ONNX's and ONNX Runtime's own exception types (DecodeError, Fail, InvalidGraph, ...)
            external = next(_external_tensors(onnx.load(str(self.path), load_external_data=False)), None)
            self.session = None if external is not None else cpu_session(self.path, threads)
        except Exception as error:
            raise AUFormerError(f"{self.path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
        if external is not None:
            raise AUFormerError(
                f"{self.path}: tensor {show(external)} keeps its data in another file; only self-contained files "
                f"are opened, as `auformer export` writes them"
            )
        meta = read_metadata(self.path, self.session.get_modelmeta().custom_metadata_map)
        check_graph(self.path, self.session, meta)
        self.aus: list[int] = meta["aus"]
        self.thresholds = np.array(meta["thresholds"], dtype=np.float64)  # (N,)
        self.outputs: list[str] = meta["outputs"]
        self.data_config = {"input_size": (3, meta["input_size"], meta["input_size"]), "mean": meta["mean"], "std": meta["std"]}
        self.resize_size: int = meta["resize_size"]
        self.synthetic = meta.get("dataset") == "synthetic"

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """``{"probs": (B, N), "intensity": (B, N)}`` (the ones the file has) of model inputs ``(B, 3, S, S)``."""
        results = self.session.run(self.outputs, {"images": images.numpy()})
        for name, values in zip(self.outputs, results):  # a graph may compute other shapes than it declares
            top = 1 if name == "probabilities" else INTENSITY_MAX
            if values.shape != (len(images), len(self.aus)) or not ((values >= 0) & (values <= top)).all():
                raise AUFormerError(
                    f"{self.path}: ONNX output {name!r} is not {len(images)} x {len(self.aus)} values in [0, {top}] "
                    f"(shape {values.shape}); {EXPORT_AGAIN}"
                )
        return {OUTPUT_KEYS[name]: values for name, values in zip(self.outputs, results)}
