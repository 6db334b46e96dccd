"""Adapter-only checkpoints: ``NAME.safetensors`` (learnable tensors) + ``NAME.json`` (how to rebuild).

The safetensors file holds the experts and heads (about 9 MB for ViT-B/16 and 12
AUs), plus the backbone's own weights only when the backbone was randomly
initialised (it then has no file of its own, and the checkpoint must rebuild it).
The JSON holds ``model.config``, the AU list, the backbone weights source with the
file's sha256, the auformer version and the caller's ``extra``; the same JSON is
also stored in the safetensors header, so the weights file alone is enough.

A checkpoint may come from anyone (``--checkpoint user/name`` reads it from the Hub), so
loading checks it in order before using it: the JSON against a schema (`check_meta`: every
field's type and range, from the config's own table), the model it describes against size
limits (`build_model`), and the tensor shapes of the safetensors header against that model,
before a tensor is read. A bad file is one line naming the file and the field.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from auformer import __version__
from auformer.aus import AU_NAMES, au_columns
from auformer.config import Rule, field_spec, value_problem
from auformer.errors import AUFormerError
from auformer.files import atomic_path, atomic_write_text
from auformer.model.auformer import AUFormer, build_model
from auformer.model.backbone import WEIGHT_SOURCES, describe_mismatch, resolve_weights
from auformer.model.weights import download_checkpoint, parse_repo_id

FORMAT = "auformer-adapter/1"
BACKBONE_PREFIX = "backbone."
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # safetensors' names
MAX_META_BYTES = 1 << 20  # a checkpoint's JSON is a few kB, its training record included


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``run/best``, ``run/best.safetensors`` or ``run/best.json`` -> the (weights, config) file pair."""
    if Path(path).name in ("", ".", ".."):
        raise AUFormerError(f"checkpoint {str(path)!r} names no file (expected PATH, PATH.safetensors or PATH.json)")
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local checkpoint path as given; a Hugging Face Hub repo id ``user/name[@revision]`` -> its cached files.

    A local checkpoint wins over a Hub repo of the same name (``runs/best`` is both a
    path and a valid repo id), so the Hub is only asked when no local file exists. A run
    folder means its ``best`` (else ``last``) checkpoint; a path whose parent folder exists
    here (``runs/typo``) is taken as local, and a missing one is one line, with no Hub wait.
    """
    weights_path, json_path = checkpoint_paths(name_or_path)  # refuses "", "." and ".." first
    path = Path(name_or_path)
    if path.is_dir():  # a run folder (``runs/tiny``) stands for its best checkpoint, else its last
        return _run_folder_checkpoint(path)
    repo = parse_repo_id(str(name_or_path))
    if weights_path.exists() or json_path.exists() or repo is None:
        return path
    if path.parent.is_dir() and path.parent != Path("."):  # runs/typo: a local-looking path, not a repo id
        raise FileNotFoundError(
            f"checkpoint {name_or_path}: no such file ({weights_path.name} or {json_path.name}) in {path.parent}; "
            "a Hub repo id user/name names no local folder"
        )
    return download_checkpoint(*repo)


RUN_CHECKPOINTS = ("best", "last")  # what a training run folder holds, preferred first


def _run_folder_checkpoint(folder: Path) -> Path:
    for stem in RUN_CHECKPOINTS:
        if (folder / f"{stem}.safetensors").exists() or (folder / f"{stem}.json").exists():
            return folder / stem
    raise FileNotFoundError(
        f"checkpoint {folder}: a folder with no checkpoint in it "
        f"(expected {' or '.join(s + '.safetensors' for s in RUN_CHECKPOINTS)}, as a training run writes)"
    )


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
    """The checkpoint's JSON (or, if the JSON was lost, its copy in the safetensors header), checked by `check_meta`."""
    weights_path, json_path = checkpoint_paths(resolve_checkpoint(path))
    if json_path.is_file():
        source = json_path
        with open(json_path, "rb") as file:
            raw = file.read(MAX_META_BYTES + 1)
    elif weights_path.is_file():
        try:
            with safe_open(str(weights_path), framework="pt") as file:
                source, text = weights_path, (file.metadata() or {}).get("auformer")
        except SafetensorError as error:
            raise AUFormerError(f"{weights_path}: not a safetensors file ({error})") from None
        if text is None:
            raise AUFormerError(f"{weights_path}: not an auformer checkpoint (no 'auformer' metadata and no {json_path.name})")
        raw = text.encode()
    else:
        raise FileNotFoundError(f"checkpoint not found: {weights_path} (nor {json_path.name})")
    if len(raw) > MAX_META_BYTES:
        raise AUFormerError(f"{source}: checkpoint description larger than {MAX_META_BYTES // 1024} kB")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise AUFormerError(f"{source}: invalid checkpoint JSON: {error}") from None
    except RecursionError:
        raise AUFormerError(f"{source}: invalid checkpoint JSON: nested too deeply") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise AUFormerError(f"{source}: not an auformer checkpoint (format must be {FORMAT!r})")
    return check_meta(meta, source)


def _field_specs() -> dict[str, tuple[Any, Rule | None]]:
    """``config`` key -> (type, rule): `build_model`'s arguments, checked with the config's own table."""
    specs = {"num_aus": (int, Rule(1, len(AU_NAMES)))}
    for name in list(inspect.signature(build_model).parameters)[1:]:
        specs[name] = field_spec({"aus": "data.aus", "img_size": "data.img_size"}.get(name, f"model.{name}"))
    specs["aus"] = (list[int] | None, specs["aus"][1])
    specs["backbone_weights"] = (str | None, specs["backbone_weights"][1])  # null: 0.1.0 wave-1 random backbones
    return specs


def _check(source: Path, where: str, value: Any, spec: tuple[Any, Rule | None]) -> None:
    problem = value_problem(value, *spec)
    if problem:
        raise AUFormerError(f"{source}: {where}: {problem}")


def check_meta(meta: dict, source: str | os.PathLike) -> dict:
    """Check a checkpoint description before anything is built from it; returns it, or one line naming the field.

    ``config`` must hold `build_model`'s arguments only, each of its type and within the range
    the config allows (the AU lists: distinct FACS action units, one per output); ``backbone``
    and ``extra`` the fields that loading and detection read. What older versions wrote stays
    valid (a missing ``task`` is occurrence; a null ``backbone_weights`` a stored random backbone).
    """
    source = Path(source)
    config, backbone, extra = meta.get("config"), meta.get("backbone"), meta.get("extra", {})
    for key, value in (("config", config), ("backbone", backbone), ("extra", extra)):
        if not isinstance(value, dict):
            found = _kind(value) if key in meta else "nothing (missing)"
            raise AUFormerError(f"{source}: {key}: must be a JSON object, got {found}")
    specs = _field_specs()
    for key in ("num_aus", "backbone", "backbone_weights"):
        if key not in config:
            raise AUFormerError(f"{source}: config.{key}: missing")
    for key, value in config.items():
        if key not in specs:
            raise AUFormerError(f"{source}: config.{key}: not a model setting of auformer {__version__}")
        _check(source, f"config.{key}", value, specs[key])
    aus = meta.get("aus")
    _check(source, "aus", aus, specs["aus"])
    if aus is not None and len(aus) != config["num_aus"]:
        raise AUFormerError(f"{source}: aus: {len(aus)} AUs but config.num_aus is {config['num_aus']}")
    if config.get("aus") is not None and config["aus"] != aus:
        raise AUFormerError(f"{source}: config.aus: {config['aus']} differs from aus {aus}")
    if backbone.get("name") != config["backbone"]:
        raise AUFormerError(f"{source}: backbone.name: {_kind(backbone.get('name'))} differs from config.backbone")
    _check(source, "backbone.weights", backbone.get("weights"), specs["backbone_weights"])
    sha256 = backbone.get("sha256")
    if sha256 is not None and not (isinstance(sha256, str) and re.fullmatch("[0-9a-f]{64}", sha256)):
        raise AUFormerError(f"{source}: backbone.sha256: not a sha256 hex digest")
    if not isinstance(backbone.get("included", False), bool):
        raise AUFormerError(f"{source}: backbone.included: must be true or false")
    for key in ("dataset", "fold", "img_size", "resize_size"):  # the training record that detection and export read
        if extra.get(key) is not None:
            _check(source, f"extra.{key}", extra[key], field_spec(f"data.{key}"))
    resize, size = extra.get("resize_size"), config.get("img_size", 224)
    if resize is not None and resize < size:
        raise AUFormerError(f"{source}: extra.resize_size: {resize} must be >= config.img_size ({size})")
    _check_thresholds(source, extra.get("thresholds"), aus)
    return meta


def _check_thresholds(source: Path, thresholds: Any, aus: list[int] | None) -> None:
    """``extra.thresholds`` (train.threshold_search), when present: one threshold in [0, 1] for each AU of ``aus``."""
    if thresholds is None:
        return
    columns = au_columns(aus or [])
    if not isinstance(thresholds, dict) or sorted(thresholds) != sorted(columns):
        raise AUFormerError(
            f"{source}: extra.thresholds: must map each AU of aus ({', '.join(columns) or 'none'}) to a threshold, "
            f"got {_kind(thresholds)}"
        )
    for column, value in thresholds.items():
        _check(source, f"extra.thresholds.{column}", value, field_spec("train.threshold"))


def checkpoint_thresholds(meta: dict) -> list[float] | None:
    """The per-AU thresholds a run tuned on its validation split (``extra.thresholds``), in the model's AU
    order; None for checkpoints without them (they use train.threshold, 0.5)."""
    thresholds = meta.get("extra", {}).get("thresholds")
    return None if thresholds is None else [float(thresholds[column]) for column in au_columns(meta["aus"])]


def _kind(value: Any) -> str:
    """A short description of a JSON value for an error line (the value itself may be huge)."""
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__} of {len(text)} characters"


def load_adapter_weights(model: AUFormer, path: str | os.PathLike) -> None:
    """Load a checkpoint's experts and heads into an existing ``model``.

    Fails with one line if the checkpoint was made for another AU set, backbone or
    expert shapes. Backbone tensors in the file (random-init backbones) are loaded too.
    """
    path = resolve_checkpoint(path)
    _load_weights(model, checkpoint_paths(path)[0], read_checkpoint_meta(path))


def _load_weights(model: AUFormer, weights_path: Path, meta: dict) -> None:
    """`load_adapter_weights` with the checkpoint's description already read (and checked)."""
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
    header = _header(weights_path)
    backbone_part = {k[len(BACKBONE_PREFIX) :]: v for k, v in header.items() if k.startswith(BACKBONE_PREFIX)}
    adapter_part = {k: v for k, v in header.items() if not k.startswith(BACKBONE_PREFIX)}
    # full-finetune: the learnable backbone travels with the backbone tensors, checked below
    learnable = {k: v for k, v in model.learnable_state_dict().items() if not k.startswith(BACKBONE_PREFIX)}
    mismatch = describe_mismatch(learnable, adapter_part)
    if backbone_part or meta["backbone"].get("included"):  # included: without it the model keeps a backbone never trained
        mismatch = mismatch or describe_mismatch(model.backbone.state_dict(), backbone_part)
    if mismatch:
        raise AUFormerError(f"{weights_path} does not fit the model: {mismatch}")
    tensors = load_file(str(weights_path))  # safetensors: data only, nothing in the file can run; shapes checked above
    model.load_state_dict({k: tensors[k] for k in adapter_part}, strict=False)  # keys checked exactly above
    if backbone_part:
        model.backbone.load_state_dict({k: tensors[BACKBONE_PREFIX + k] for k in backbone_part})


def _header(weights_path: Path) -> dict[str, torch.Tensor]:
    """The tensors a safetensors file declares, from its header alone: meta tensors (shape, no data).

    safetensors checks at opening that every tensor's bytes lie inside the file, so the shapes
    cannot claim more than the file holds; floating-point tensors only (weights).
    """
    try:
        with safe_open(str(weights_path), framework="pt") as file:
            slices = {name: file.get_slice(name) for name in file.keys()}
            bad = next((name for name, part in slices.items() if part.get_dtype() not in FLOAT_DTYPES), None)
            if bad is not None:
                raise AUFormerError(f"{weights_path}: tensor {bad} is {slices[bad].get_dtype()}, not floating point")
            return {name: torch.empty(part.get_shape(), device="meta") for name, part in slices.items()}
    except SafetensorError as error:
        raise AUFormerError(f"{weights_path}: not a safetensors file ({error})") from None


def checkpoint_aus(model: AUFormer, checkpoint: str | os.PathLike) -> list[int]:
    """The AUs a loaded checkpoint predicts; one line when it has none (built without ``aus``), since
    the commands name their outputs by AU."""
    if not model.aus:
        raise AUFormerError(f"{checkpoint}: checkpoint has no AU list; cannot name the output columns")
    return list(model.aus)


@dataclass(frozen=True)
class OpenedCheckpoint:
    """A loaded checkpoint with what callers read besides the model, so its description is read once."""

    model: AUFormer  # in eval mode, on the requested device
    meta: dict  # the checked description (`read_checkpoint_meta`)
    path: Path  # the local checkpoint path (a Hub repo id resolved to its cached files)


def load_checkpoint(
    path: str | os.PathLike, backbone_weights: str | None = None, map_location: str | torch.device = "cpu"
) -> AUFormer:
    """Rebuild the model from ``PATH.json`` and load ``PATH.safetensors`` into it.

    ``path`` may also be a Hugging Face Hub repo id, ``user/name`` or ``user/name@revision``
    (see `auformer.model.weights`). ``backbone_weights`` overrides the recorded backbone file (e.g. after moving it);
    a file whose sha256 differs from the recorded one gives a warning. The model is
    returned in eval mode (call ``.train()`` to resume training).
    """
    return open_checkpoint(path, backbone_weights, map_location).model


def open_checkpoint(
    path: str | os.PathLike, backbone_weights: str | None = None, map_location: str | torch.device = "cpu"
) -> OpenedCheckpoint:
    """`load_checkpoint`, also returning the description and local path: one read of the JSON per load."""
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
    try:
        model = build_model(**config)  # its own checks: the geometry and size the description asks for
    except AUFormerError as error:
        raise AUFormerError(f"{checkpoint_paths(path)[1]}: config: {error}") from None
    _load_weights(model, checkpoint_paths(path)[0], meta)
    return OpenedCheckpoint(model.to(map_location).eval(), meta, path)
