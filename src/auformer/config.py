"""Experiment configuration as data: dataclasses, YAML presets and ``--set`` overrides.

A run is fully described by one ``Config`` (data, model, loss, train). Presets in
``auformer/presets/*.yaml`` only list what differs from the dataclass defaults, and
every value is checked against the field's type when the config is built, so a typo
fails before any data is read, naming the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from auformer.errors import AUFormerError, one_line

DEFAULT_PRESET = "synthetic"
_PRESETS = resources.files("auformer") / "presets"


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # name recorded with the run; "synthetic" generates faces in memory
    root: str | None = None  # prepared dataset folder (manifest.csv + folds.json); set with --data
    aus: list[int] | None = None  # FACS numbers to train on; None = every AU of the dataset
    fold: int = 0  # test fold of `auformer train` (0-based index into folds.json)
    cv_folds: list[int] | None = None  # folds run by cv / cross-domain / data-efficiency; None = all
    val_fold: int | None = None  # fold held out of training to pick the best checkpoint; None = keep last
    target_root: str | None = None  # cross-domain: prepared folder of the target dataset (tested whole)
    train_fraction: float = 1.0  # equidistant subsample of the training list (data efficiency)
    data_efficiency_rates: list[float] = field(default_factory=lambda: [0.1, 0.01, 0.005, 0.001])  # fractions
    img_size: int = 224  # network input size in pixels
    resize_size: int | None = 256  # resize before the (random/centre) crop; None = img_size * 256/224
    color_jitter: float = 0.4  # brightness/contrast/saturation jitter strength in training (0 = off)
    hflip: bool = True  # random horizontal flip in training
    num_workers: int = 2  # DataLoader worker processes (exact mid-epoch resume needs 0)
    synthetic_images: int = 3000  # synthetic dataset: number of generated faces
    synthetic_size: int = 64  # synthetic dataset: face image size in pixels
    synthetic_subjects: int = 60  # synthetic dataset: number of identities (folds are subject-exclusive)
    synthetic_folds: int = 3  # synthetic dataset: number of subject-exclusive folds
    synthetic_seed: int = 0  # synthetic dataset: generator seed
    skip_bad: bool = False  # drop missing/undecodable images (listed in RUN/skipped.json) instead of stopping


@dataclass
class ModelConfig:
    backbone: str = "vit_base_patch16_224"  # timm ViT name
    backbone_weights: str = (
        "hub"  # "hub" (timm tag's weights, HF cache first), a local .safetensors/.pth/.npz file, "synthetic" or "random"
    )
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm create_model kwargs
    moke: str = "fused"  # expert-group implementation: "fused" (fast) or "reference" (literal)
    d: int = 4  # expert width after the down-projection
    dilations: list[int] = field(default_factory=lambda: [1, 3, 5])  # MRF dilation rates
    ca_size: int = 3  # context-aware neighbourhood S (S x S)
    use_mrf: bool = True  # multi-receptive-field operator (ablation switch)
    use_ca: bool = True  # context-aware operator (ablation switch)
    collaborate: bool = True  # carry each expert's knowledge to the next group (ablation switch)
    aux_head: bool = True  # per-AU auxiliary heads on the last expert group
    dropout: float = 0.1  # dropout inside the experts (auformer, convpass) and in AdaptFormer's bottleneck
    scale: float = 1.0  # output scale s of the experts
    task: str = "occurrence"  # heads: occurrence (the paper), intensity (0-5 per AU) or both (docs/intensity.md)
    method: str = "auformer"  # auformer, or a comparison: full-finetune, linear, adapter, adaptformer, lora, vpt, convpass
    # (docs/ablations.md)
    adapter_bottleneck: int = 64  # adapter (Houlsby) and adaptformer: bottleneck width (both papers' code: 64)
    adapter_scale: float = 0.1  # adaptformer: output scale s (AdaptFormer: 0.1; Houlsby's adapter has none)
    lora_rank: int = 8  # lora: rank r of the updates
    lora_alpha: float = 8.0  # lora: the updates are scaled by lora_alpha / lora_rank
    lora_targets: list[str] = field(default_factory=lambda: ["q", "v"])  # lora: which of q, k, v (LoRA paper: q, v)
    vpt_prompts: int = 10  # vpt: prompt tokens per block (deep VPT)
    drop_path: float = 0.1  # full-finetune: the backbone's drop-path rate in training (frozen backbones stay in eval mode)
    recompute: bool = True  # fused experts recompute d-space ops in backward: less memory, ~30% slower small-model steps


@dataclass
class LossConfig:
    name: str = "mdwa"  # per-head classification loss: mdwa, dwa (gamma only), mwa (margin only), wa or wce (docs/losses.md)
    wdi: bool = True  # add the WDI (weighted Dice) term on the main head
    aux_weight: float = 1.0  # weight of the auxiliary-head loss (0 = main head only)
    margin: float = 0.1  # MDWA truncation margin m (BP4D 0.1, DISFA 0.15, CASME II 0.3)
    gamma_bounds: list[float] = field(default_factory=lambda: [1.0, 2.0])  # MDWA [B_L, B_R]
    eps: float = 1.0  # WDI smoothing term
    wdi_reduction: str = "batch"  # WDI dice per AU over the batch (JAA-Net, default) or per (sample, AU): batch or sample
    intensity_weight: float = 1.0  # weight of the intensity loss (masked MSE on the 0-1 scale), main + aux heads


@dataclass
class TrainConfig:
    epochs: int = 20  # passes over the training split
    steps: int | None = None  # length in optimiser steps (overrides epochs; the last epoch stops at the budget)
    batch_size: int = 64  # global batch size (split across DDP processes)
    lr: float = 5e-4  # peak AdamW learning rate
    head_lr: float | None = None  # peak learning rate of the classification heads; None = lr
    min_lr: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_epochs: float = 1.0  # linear warm-up length in epochs (per-step schedule), at most 10% of the run
    warmup_steps: int | None = None  # linear warm-up in optimiser steps (overrides warmup_epochs; at most the run minus one step)
    weight_decay: float = 5e-4  # AdamW decoupled weight decay
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW betas
    grad_accum: int = 1  # micro-batches per optimiser step
    grad_clip: float | None = 1.0  # max gradient L2 norm; None = no clipping
    amp: str = "none"  # autocast: none, bf16 or fp16 (fp16 on GPU only)
    compile: bool = False  # wrap the model in torch.compile
    device: str = "auto"  # auto (cuda if available), cpu or cuda
    seed: int = 0  # seeds model init, sampling order, augmentation and dropout
    threshold: float = 0.5  # probability threshold for F1
    eval_every: int = 1  # evaluate every this many epochs (and after the last); step budgets use eval_every_steps
    # a step budget (train.steps, or a data.train_fraction < 1 subset's, set for it) evaluates after the epoch
    # reaching each multiple of this; None = at the end only
    eval_every_steps: int | None = None
    checkpoint_every: int = 50  # write a resumable checkpoint every this many optimiser steps


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = DEFAULT_PRESET  # name (or path) of the preset this config came from

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Values checked against these so that YAML typos fail early instead of deep in training.
_CHOICES = {
    ("model", "moke"): ("fused", "reference"),
    ("model", "task"): ("occurrence", "intensity", "both"),
    ("model", "method"): ("auformer", "full-finetune", "linear", "adapter", "adaptformer", "lora", "vpt", "convpass"),
    ("loss", "name"): ("mdwa", "dwa", "mwa", "wa", "wce"),
    ("loss", "wdi_reduction"): ("batch", "sample"),
    ("train", "amp"): ("none", "bf16", "fp16"),
    ("train", "device"): ("auto", "cpu", "cuda"),
}


def preset_names() -> list[str]:
    """Names of the presets shipped in the package (``synthetic``, ``bp4d``, ...)."""
    return sorted(p.name.removesuffix(".yaml") for p in _PRESETS.iterdir() if p.name.endswith(".yaml"))


def _read_preset(preset: str) -> dict[str, Any]:
    """Read a preset by package name or YAML path into a plain dict."""
    if preset.endswith((".yaml", ".yml")):
        path = Path(preset)
        if not path.is_file():
            raise FileNotFoundError(f"preset file {path} does not exist")
        text = path.read_text()
    else:
        if preset not in preset_names():
            close = difflib.get_close_matches(preset, preset_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AUFormerError(f"unknown preset {preset!r}{hint}; choose from {', '.join(preset_names())} or a .yaml path")
        text = _PRESETS.joinpath(f"{preset}.yaml").read_text()
    try:
        data = yaml.safe_load(text) or {}  # safe loading: a `!!python/object` tag is refused, never built
    except yaml.YAMLError as error:
        raise AUFormerError(f"preset {preset}: not valid YAML for auformer ({one_line(error)})") from None
    if not isinstance(data, dict):
        raise AUFormerError(f"preset {preset}: expected a mapping of sections (data, model, loss, train)")
    return data


def _matches(value: Any, hint: Any) -> bool:
    """Whether a YAML value fits a field's type hint (ints are accepted for floats)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _coerce(section: str, key: str, value: Any, hint: Any) -> Any:
    """Check a value against its field; ints (and YAML 1.1 strings like ``3e-4``) become floats where a float is expected."""
    if isinstance(value, str) and _matches(1.5, hint):
        try:
            value = float(value)
        except ValueError:
            pass  # reported below as a type error naming the field
    if not _matches(value, hint):
        raise AUFormerError(f"config {section}.{key}: {value!r} is not a valid {_type_name(hint)}")
    choices = _CHOICES.get((section, key))
    if choices is not None and value not in choices:
        raise AUFormerError(f"config {section}.{key}: {value!r} is not one of {', '.join(choices)}")
    if hint is float or (typing.get_origin(hint) in (typing.Union, types.UnionType) and float in typing.get_args(hint)):
        return float(value) if isinstance(value, int) else value
    if typing.get_args(hint) == (float,):
        return [float(v) for v in value]
    return value


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def _unknown_key(name: str, valid: list[str], prefix: str) -> AUFormerError:
    """Error naming the unknown key and the closest valid one (``train.lrr`` -> ``train.lr``)."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return AUFormerError(f"unknown config key {prefix + name!r}{hint}")


def _section_fields(section: str) -> dict[str, Any]:
    """Field name -> resolved type hint of one section dataclass."""
    sections = typing.get_type_hints(Config)
    if section not in sections or section == "preset":
        raise _unknown_key(section, [n for n in sections if n != "preset"], "")
    return typing.get_type_hints(sections[section])


def apply_values(values: dict[str, dict[str, Any]], config: Config) -> Config:
    """Return a copy of ``config`` with ``{section: {key: value}}`` applied, type-checked."""
    sections = {}
    for section, updates in values.items():
        hints = _section_fields(section)
        if not isinstance(updates, dict):
            raise AUFormerError(f"config section {section!r} must be a mapping, got {updates!r}")
        checked = {}
        for key, value in updates.items():
            if key not in hints:
                raise _unknown_key(key, list(hints), f"{section}.")
            checked[key] = _coerce(section, key, value, hints[key])
        sections[section] = dataclasses.replace(getattr(config, section), **checked)
    return dataclasses.replace(config, **sections)


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``["train.lr=3e-4", "data.aus=[1, 2]"]`` into ``{section: {key: value}}``.

    Values are YAML scalars/lists (``yaml.safe_load``, never ``eval``).
    """
    values: dict[str, dict[str, Any]] = {}
    for item in overrides:
        name, sep, raw = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise AUFormerError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        try:
            values.setdefault(section, {})[key] = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise AUFormerError(f"--set {item!r}: the value is not valid YAML ({one_line(error)})") from None
    return values


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] = (), data_dir: str | None = None) -> Config:
    """Build a validated ``Config`` from a preset (name or YAML path), ``--set`` overrides and ``--data``."""
    values = _read_preset(preset)
    config = Config(preset=str(values.pop("preset", preset)))
    config = apply_values(values, config)
    config = apply_values(parse_overrides(list(overrides)), config)
    if data_dir is not None:
        # Own data under the synthetic preset's settings is no longer "synthetic" (checkpoints record it).
        name = Path(data_dir).name if config.data.dataset == "synthetic" else config.data.dataset
        config = apply_values({"data": {"root": str(data_dir), "dataset": name}}, config)
    return validate(config)


def validate(config: Config) -> Config:
    """Cross-field checks that single-field types cannot express."""
    data, train = config.data, config.train
    if data.dataset != "synthetic" and data.root is None:
        raise AUFormerError(f"preset {config.preset!r} needs a prepared dataset folder: pass --data DIR (see `auformer prepare`)")
    if not 0 < data.train_fraction <= 1:
        raise AUFormerError(f"config data.train_fraction: {data.train_fraction} must be in (0, 1]")
    if data.val_fold is not None and data.val_fold == data.fold:
        raise AUFormerError(f"config data.val_fold: {data.val_fold} must differ from data.fold")
    for name in ("epochs", "batch_size", "grad_accum", "eval_every", "checkpoint_every"):
        if getattr(train, name) < 1:
            raise AUFormerError(f"config train.{name}: {getattr(train, name)} must be >= 1")
    if train.lr <= 0:
        raise AUFormerError(f"config train.lr: {train.lr} must be > 0")
    for name, low in (("steps", 1), ("warmup_steps", 0), ("eval_every_steps", 1)):
        value = getattr(train, name)
        if value is not None and value < low:
            raise AUFormerError(f"config train.{name}: {value} must be >= {low} (or null)")
    _validate_weights(config.model.backbone_weights)
    _validate_switches(config)
    return config


def _validate_weights(weights: str) -> None:
    """A weight source by name, or something that looks like a weight file (its existence is checked at setup)."""
    from auformer.model.backbone import WEIGHT_SOURCES, WEIGHT_SUFFIXES

    if weights not in WEIGHT_SOURCES and not weights.endswith(WEIGHT_SUFFIXES):
        raise AUFormerError(
            f"config model.backbone_weights: {weights!r} is not one of {', '.join(WEIGHT_SOURCES)} "
            f"nor a weight file ({', '.join(WEIGHT_SUFFIXES)})"
        )


def _validate_switches(config: Config) -> None:
    """Refuse ablation-switch combinations that have no meaning (docs/training.md, "Ablation switches")."""
    from auformer.model.petl import check_lora_targets

    model, loss = config.model, config.loss
    check_lora_targets(model.lora_targets, "config model.lora_targets")
    if not 0 <= model.drop_path < 1:
        raise AUFormerError(f"config model.drop_path: {model.drop_path} must be in [0, 1)")
    if not model.collaborate and (model.aux_head or loss.aux_weight > 0):
        raise AUFormerError(
            "config model.collaborate: false (the paper's no-collaboration rows: one shared expert per group) "
            "has no per-AU experts for auxiliary heads; also pass --set model.aux_head=false --set loss.aux_weight=0"
        )
    if not model.aux_head and loss.aux_weight > 0:
        raise AUFormerError(
            f"config loss.aux_weight: {loss.aux_weight} weights an auxiliary loss, but model.aux_head is false; "
            "pass --set loss.aux_weight=0 (or keep the heads)"
        )
    if loss.aux_weight < 0:
        raise AUFormerError(f"config loss.aux_weight: {loss.aux_weight} must be >= 0")
    if loss.eps <= 0:
        raise AUFormerError(f"config loss.eps: {loss.eps} must be > 0 (it keeps the WDI ratio finite)")
    if not 0 <= loss.margin < 1:
        raise AUFormerError(f"config loss.margin: {loss.margin} must be in [0, 1)")
    if len(loss.gamma_bounds) != 2 or min(loss.gamma_bounds) <= 0:
        raise AUFormerError(f"config loss.gamma_bounds: {loss.gamma_bounds} must be two positive numbers [B_L, B_R]")


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what `--preset path.yaml` reads back)."""
    from auformer.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
