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
from pathlib import Path

import numpy as np
import torch

from auformer.errors import AUFormerError

RUNTIMES = ("torch", "onnxruntime")
METADATA_KEY = "auformer"  # ONNX metadata_props key holding the JSON below
OUTPUT_KEYS = {"probabilities": "probs", "intensity": "intensity"}  # graph output -> Detector's name
REQUIRED = ("aus", "thresholds", "outputs", "input_size", "mean", "std", "resize_size")


def read_metadata(path: Path, metadata: dict[str, str]) -> dict:
    """The ``auformer`` metadata of an exported file, checked: AU list, one threshold per AU, outputs, preprocessing."""
    advice = "export it again with `auformer export` (this version writes the AU list and thresholds into the file)"
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except (KeyError, json.JSONDecodeError):
        raise AUFormerError(f"{path}: ONNX file has no auformer metadata (AU list, thresholds); {advice}") from None
    missing = [key for key in REQUIRED if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise AUFormerError(f"{path}: ONNX metadata lacks {', '.join(missing)}; {advice}")
    aus, thresholds = meta["aus"], meta["thresholds"]
    if not aus or not all(isinstance(au, int) and au > 0 for au in aus):
        raise AUFormerError(f"{path}: ONNX metadata 'aus' must be a non-empty list of AU numbers, got {aus!r}")
    if len(thresholds) != len(aus) or not all(isinstance(t, (int, float)) and 0 <= t <= 1 for t in thresholds):
        raise AUFormerError(f"{path}: ONNX metadata needs one threshold in [0, 1] per AU ({len(aus)}), got {thresholds!r}")
    if not meta["outputs"] or not set(meta["outputs"]) <= set(OUTPUT_KEYS):
        raise AUFormerError(f"{path}: ONNX metadata 'outputs' must name {' and/or '.join(OUTPUT_KEYS)}, got {meta['outputs']!r}")
    return meta


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
        if importlib.util.find_spec("onnxruntime") is None:
            raise AUFormerError("--runtime onnxruntime needs ONNX Runtime: pip install 'auformer[export]'")
        self.path = Path(path)
        if self.path.suffix != ".onnx" or not self.path.is_file():
            raise AUFormerError(f"{self.path}: --runtime onnxruntime needs an .onnx file written by `auformer export`")
        try:
            self.session = cpu_session(self.path, threads)
        except Exception as error:  # ONNX Runtime's own exception types (Fail, InvalidGraph, ...)
            raise AUFormerError(f"{self.path}: not a readable ONNX model ({str(error).splitlines()[0]})") from None
        meta = read_metadata(self.path, self.session.get_modelmeta().custom_metadata_map)
        self.aus: list[int] = meta["aus"]
        self.thresholds = np.array(meta["thresholds"], dtype=np.float64)  # (N,)
        self.outputs: list[str] = meta["outputs"]
        self.data_config = {"input_size": (3, meta["input_size"], meta["input_size"]), "mean": meta["mean"], "std": meta["std"]}
        self.resize_size: int = meta["resize_size"]
        self.synthetic = meta.get("dataset") == "synthetic"

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        """``{"probs": (B, N), "intensity": (B, N)}`` (the ones the file has) of model inputs ``(B, 3, S, S)``."""
        results = self.session.run(self.outputs, {"images": images.numpy()})
        return {OUTPUT_KEYS[name]: values for name, values in zip(self.outputs, results)}
