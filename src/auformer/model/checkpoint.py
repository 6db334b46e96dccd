"""Adapter-only checkpoints: ``NAME.safetensors`` (learnable tensors) + ``NAME.json`` (how to rebuild).

The safetensors file holds the experts and heads (about 9 MB for ViT-B/16 and 12
AUs), plus the backbone's own weights only when the backbone was randomly
initialised (it then has no file of its own, and the checkpoint must rebuild it).
The JSON holds ``model.config``, the AU list, the backbone weights source with the
file's sha256, the auformer version and the caller's ``extra``; the same JSON is
also stored in the safetensors header, so the weights file alone is enough.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from auformer import __version__
from auformer.errors import AUFormerError
from auformer.files import atomic_path, atomic_write_text
from auformer.hub import download_checkpoint, parse_repo_id
from auformer.model.auformer import AUFormer, build_model
from auformer.model.backbone import WEIGHT_SOURCES, describe_mismatch, resolve_weights

FORMAT = "auformer-adapter/1"
BACKBONE_PREFIX = "backbone."


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``run/best``, ``run/best.safetensors`` or ``run/best.json`` -> the (weights, config) file pair."""
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint path as given; a Hugging Face Hub repo id ``user/name[@revision]`` -> its cached files.

    A local checkpoint wins over a Hub repo of the same name (``runs/best`` is both a
    path and a valid repo id), so the Hub is only asked when no local file exists.
    """
    weights_path, json_path = checkpoint_paths(name_or_path)
    repo = parse_repo_id(str(name_or_path))
    if weights_path.exists() or json_path.exists() or repo is None:
        return Path(name_or_path)
    return download_checkpoint(*repo)


@functools.lru_cache(maxsize=8)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of a file; cached on (path, mtime, size) since a run saves many checkpoints of one backbone."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    stat = os.stat(path)
    return _sha256(str(path), stat.st_mtime_ns, stat.st_size)


def save_checkpoint(model: AUFormer, path: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write ``PATH.safetensors`` and ``PATH.json`` atomically; returns the safetensors path.

    ``extra`` (JSON-able, e.g. epoch and scores) is stored as is in the JSON.
    """
    weights_path, json_path = checkpoint_paths(path)
    source = model.config["backbone_weights"]
    weights_file = resolve_weights(source) if source not in ("random", "hub") else None
    meta = {
        "format": FORMAT,
        "auformer_version": __version__,
        "config": model.config,
        "aus": model.aus,
        "backbone": {
            "name": model.config["backbone"],
            "weights": source,
            "sha256": file_sha256(weights_file) if weights_file else None,
            "included": source == "random" or model.config.get("method") == "full-finetune",  # fine-tuned: stored
        },
        "extra": extra or {},
    }
    try:
        meta_text = json.dumps(meta, indent=2)
    except TypeError as error:
        raise AUFormerError(f"{json_path}: checkpoint extra is not JSON-serialisable: {error}") from None
    tensors = model.learnable_state_dict()
    if source == "random":  # random backbone: the checkpoint must carry it to rebuild the same model
        tensors.update({BACKBONE_PREFIX + k: v for k, v in model.backbone.state_dict().items()})
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(weights_path) as tmp:
        save_file(tensors, str(tmp), metadata={"auformer": meta_text})
    atomic_write_text(json_path, meta_text + "\n")
    return weights_path


def read_checkpoint_meta(path: str | os.PathLike) -> dict:
    """The checkpoint's JSON (or, if the JSON was lost, its copy in the safetensors header)."""
    weights_path, json_path = checkpoint_paths(resolve_checkpoint(path))
    if json_path.is_file():
        source, text = json_path, json_path.read_text()
    elif weights_path.is_file():
        try:
            with safe_open(str(weights_path), framework="pt") as file:
                source, text = weights_path, (file.metadata() or {}).get("auformer")
        except SafetensorError as error:
            raise AUFormerError(f"{weights_path}: not a safetensors file ({error})") from None
        if text is None:
            raise AUFormerError(f"{weights_path}: not an auformer checkpoint (no 'auformer' metadata and no {json_path.name})")
    else:
        raise FileNotFoundError(f"checkpoint not found: {weights_path} (nor {json_path.name})")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as error:
        raise AUFormerError(f"{source}: invalid checkpoint JSON: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AUFormerError(f"{source}: not an auformer checkpoint (format must be {FORMAT!r})")
    return meta


def load_adapter_weights(model: AUFormer, path: str | os.PathLike) -> None:
    """Load a checkpoint's experts and heads into an existing ``model``.

    Fails with one line if the checkpoint was made for another AU set, backbone or
    expert shapes. Backbone tensors in the file (random-init backbones) are loaded too.
    """
    path = resolve_checkpoint(path)
    weights_path, _ = checkpoint_paths(path)
    meta = read_checkpoint_meta(path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"checkpoint weights not found: {weights_path}")
    if meta["aus"] != model.aus or meta["config"]["num_aus"] != model.num_aus:
        raise AUFormerError(
            f"{weights_path}: adapters are for {meta['config']['num_aus']} AUs {meta['aus']}, "
            f"the model predicts {model.num_aus} AUs {model.aus}"
        )
    task = meta["config"].get("task", "occurrence")  # checkpoints before intensity were occurrence-only
    if task != model.task:
        raise AUFormerError(
            f"{weights_path}: checkpoint was trained for task {task!r}, the model is built for task "
            f"{model.task!r} (set model.task={task} or use a {model.task} checkpoint)"
        )
    if meta["config"]["backbone"] != model.config.get("backbone"):
        raise AUFormerError(
            f"{weights_path}: adapters are for backbone {meta['config']['backbone']!r}, "
            f"the model uses {model.config.get('backbone')!r}"
        )
    try:
        tensors = load_file(str(weights_path))  # safetensors: data only, nothing in the file can run
    except SafetensorError as error:
        raise AUFormerError(f"{weights_path}: not a safetensors file ({error})") from None
    backbone_state = {k[len(BACKBONE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(BACKBONE_PREFIX)}
    adapter_state = {k: v for k, v in tensors.items() if not k.startswith(BACKBONE_PREFIX)}
    # full-finetune: the learnable backbone travels with the backbone tensors, checked below
    learnable = {k: v for k, v in model.learnable_state_dict().items() if not k.startswith(BACKBONE_PREFIX)}
    mismatch = describe_mismatch(learnable, adapter_state)
    if backbone_state:
        mismatch = mismatch or describe_mismatch(model.backbone.state_dict(), backbone_state)
    if mismatch:
        raise AUFormerError(f"{weights_path} does not fit the model: {mismatch}")
    model.load_state_dict(adapter_state, strict=False)  # keys checked exactly above
    if backbone_state:
        model.backbone.load_state_dict(backbone_state)


def load_checkpoint(
    path: str | os.PathLike, backbone_weights: str | None = None, map_location: str | torch.device = "cpu"
) -> AUFormer:
    """Rebuild the model from ``PATH.json`` and load ``PATH.safetensors`` into it.

    ``path`` may also be a Hugging Face Hub repo id, ``user/name`` or ``user/name@revision``
    (see `auformer.hub`). ``backbone_weights`` overrides the recorded backbone file (e.g. after moving it);
    a file whose sha256 differs from the recorded one gives a warning. The model is
    returned in eval mode (call ``.train()`` to resume training).
    """
    path = resolve_checkpoint(path)
    meta = read_checkpoint_meta(path)
    config = dict(meta["config"])
    recorded = meta["backbone"]
    if backbone_weights is not None:
        config["backbone_weights"] = backbone_weights
    source = config["backbone_weights"]
    if source is None:  # written before random backbones were named (0.1.0 wave 1), which stored them inside too
        source = config["backbone_weights"] = "random"
    if source not in WEIGHT_SOURCES and not Path(source).is_file():
        raise FileNotFoundError(
            f"{checkpoint_paths(path)[1]}: backbone weights {source} not found "
            "(moved? pass the new file as backbone_weights / --backbone-weights)"
        )
    if recorded.get("sha256") and source not in ("random", "hub"):
        actual = file_sha256(resolve_weights(source))
        if actual != recorded["sha256"]:
            warnings.warn(
                f"backbone weights {source} differ from the ones the checkpoint was trained with "
                f"(sha256 {actual[:12]} != {recorded['sha256'][:12]})",
                stacklevel=2,
            )
    model = build_model(**config)
    load_adapter_weights(model, path)
    return model.to(map_location).eval()
