"""Experiment configuration as data: dataclasses, YAML presets and ``--set`` overrides.

A run is fully described by one ``Config`` (data, model, loss, train). Presets in
``auformer/presets/*.yaml`` only list what differs from the dataclass defaults, and
every value is checked against its field's type and range (the table ``FIELD_RULES``) when
a section is built, so a typo or an out-of-range value fails before any data is read, naming
the field, the bad value and what is valid (for an unknown key: the closest valid one).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from auformer.aus import AU_NAMES
from auformer.errors import AUFormerError, one_line

DEFAULT_PRESET = "synthetic"
_PRESETS = resources.files("auformer") / "presets"
MAX_YAML_BYTES = 64 * 1024  # a preset or config.yaml is ~2 kB; PyYAML takes seconds per 64 kB of a huge list
MAX_OVERRIDE_CHARS = 4096  # one --set item


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

    def __post_init__(self) -> None:
        check_fields(self, "data")


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

    def __post_init__(self) -> None:
        check_fields(self, "model")


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

    def __post_init__(self) -> None:
        check_fields(self, "loss")


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

    def __post_init__(self) -> None:
        check_fields(self, "train")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = DEFAULT_PRESET  # name (or path) of the preset this config came from

    def __post_init__(self) -> None:
        check_fields(self, "")

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


# ---------------------------------------------------------------- field rules


@dataclass(frozen=True)
class Rule:
    """What a field may hold beyond its type: bounds of a number (of each number of a list),
    choices, a list's length, and a check of its own for each value (what is wrong, or None)."""

    low: float | None = None  # smallest valid number (None: any)
    high: float | None = None  # largest valid number (None: any)
    open_low: bool = False  # ``low`` itself is not valid
    open_high: bool = False  # ``high`` itself is not valid
    choices: tuple = ()  # the valid values, when there are a few
    length: tuple[int, int] | None = None  # a list's (fewest, most) values
    distinct: bool = False  # a list's values must differ
    check: Callable[[Any], str | None] | None = None  # e.g. "is not a FACS action unit"
    text: str = ""  # what ``check`` accepts, in words (docs/training.md lists every rule)

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` (already of the field's type), or None."""
        if isinstance(value, list):
            if self.length is not None and not self.length[0] <= len(value) <= self.length[1]:
                fewest, most = self.length
                wanted = f"exactly {most}" if fewest == most else f"{fewest} to {most}"
                return f"{_show(value)} has {len(value)} values; {wanted} allowed"
            if self.distinct and len(set(value)) != len(value):
                return f"{_show(value)}: the values must differ"
            problems = (self._scalar_problem(item) for item in value)
            first = next((text for text in problems if text), None)
            return f"{_show(value)}: {first}" if first else None
        return self._scalar_problem(value)

    def describe(self) -> str:
        """The rule in words, as the table of docs/training.md shows it."""
        parts = [f"{'each ' if self.length else ''}one of {', '.join(map(str, self.choices))}"] if self.choices else []
        if self.low is not None or self.high is not None:
            parts.append(("each " if self.length else "") + _interval(self))
        if self.length:
            fewest, most = self.length
            parts.append(f"exactly {most} values" if fewest == most else f"{fewest} to {most} values")
        if self.distinct:
            parts.append("distinct")
        return "; ".join([*parts, self.text] if self.text else parts)

    def _scalar_problem(self, value: Any) -> str | None:
        if self.choices and value not in self.choices:
            return f"{_show(value)} is not one of {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not _within(value, self):
            return f"{_show(value)} must be {_interval(self)}"
        return self.check(value) if self.check else None


def _within(value: float, rule: Rule) -> bool:
    """``low <= value <= high`` with the rule's open ends; NaN is never within."""
    if isinstance(value, float) and math.isnan(value):
        return False
    above = rule.low is None or (value > rule.low if rule.open_low else value >= rule.low)
    below = rule.high is None or (value < rule.high if rule.open_high else value <= rule.high)
    return above and below


def _interval(rule: Rule) -> str:
    """``in [0, 1)``, ``>= 1``, ``<= 10``."""
    low, high = (f"{bound:g}" if isinstance(bound, float) else str(bound) for bound in (rule.low, rule.high))
    if rule.high is None:
        return f"{'>' if rule.open_low else '>='} {low}"
    if rule.low is None:
        return f"{'<' if rule.open_high else '<='} {high}"
    return f"in {'(' if rule.open_low else '['}{low}, {high}{')' if rule.open_high else ']'}"


def _show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a value may be a huge list or string)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _name(value: str) -> str | None:
    if not value.strip() or len(value) > 255 or not value.isprintable():
        return f"{_show(value)} must be a non-empty name of at most 255 printable characters"
    return None


def _path(value: str) -> str | None:
    if not value.strip() or len(value) > 4096 or "\x00" in value:
        return f"{_show(value)} must be a non-empty path of at most 4096 characters without NUL"
    return None


def _facs_au(value: int) -> str | None:
    return None if value in AU_NAMES else f"{value} is not a FACS action unit number (AU_NAMES in auformer/aus.py)"


def _odd(value: int) -> str | None:
    return None if value % 2 else f"{value} must be odd (a centred S x S neighbourhood)"


def _weight_source(value: str) -> str | None:
    """A weight source by name, or something that looks like a weight file (its existence is checked at setup)."""
    from auformer.model.backbone import WEIGHT_SOURCES, WEIGHT_SUFFIXES

    if value in WEIGHT_SOURCES or (value.endswith(WEIGHT_SUFFIXES) and not _path(value)):
        return None
    return f"{_show(value)} is not one of {', '.join(WEIGHT_SOURCES)} nor a weight file ({', '.join(WEIGHT_SUFFIXES)})"


# timm ViT arguments that size the backbone, bounded so that no description asks for terabytes
# (`build_model` also checks the size of what they build); other keys are passed through to timm.
TIMM_SIZES: dict[str, tuple[type, Rule]] = {
    "patch_size": (int, Rule(1, 256)),
    "embed_dim": (int, Rule(1, 8192)),
    "depth": (int, Rule(1, 128)),
    "num_heads": (int, Rule(1, 256)),
    "mlp_ratio": (float, Rule(0, 64, open_low=True)),
    "reg_tokens": (int, Rule(0, 256)),
    "in_chans": (int, Rule(choices=(3,))),  # images are RGB
}
MAX_TIMM_KWARGS = 32


def timm_kwargs_problem(value: dict) -> str | None:
    """Keyword arguments for timm.create_model: a few names, each a number, string, bool or null."""
    if len(value) > MAX_TIMM_KWARGS:
        return f"{len(value)} keys; at most {MAX_TIMM_KWARGS} allowed"
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            return f"key {_show(key)} is not an argument name"
        if not (item is None or isinstance(item, (bool, int, float)) or (isinstance(item, str) and len(item) <= 100)):
            return f"{key}: {_show(item)} must be a number, a string, true/false or null"
        hint, rule = TIMM_SIZES.get(key, (None, None))
        problem = value_problem(item, hint, rule) if hint is not None else None
        if problem:
            return f"{key}: {problem}"
    return None


FOLDS = 100  # the most folds a dataset may have
NAME = Rule(check=_name, text="a name of 1 to 255 printable characters")
PATH = Rule(check=_path, text="a path of 1 to 4096 characters, no NUL")
SEED = Rule(0, 2**31 - 1)
FRACTION = Rule(0, 1, open_low=True)  # (0, 1]
UNIT = Rule(0, 1, open_high=True)  # [0, 1)
LEARNING_RATE = Rule(0, 10, open_low=True)
LOSS_WEIGHT = Rule(0, 1000)
OUTPUT_SCALE = Rule(0, 1000, open_low=True)


def _choices(section: str, key: str) -> Rule:
    return Rule(choices=_CHOICES[(section, key)])


# Every field of every section (None: its type is all there is to check). `check_fields` looks each
# field up here, so a new field without a rule fails every test at once.
FIELD_RULES: dict[str, Rule | None] = {
    "preset": PATH,  # a preset name or a YAML path
    "data.dataset": NAME,
    "data.root": PATH,
    "data.aus": Rule(length=(1, len(AU_NAMES)), distinct=True, check=_facs_au, text="FACS AU numbers"),
    "data.fold": Rule(0, FOLDS - 1),
    "data.cv_folds": Rule(0, FOLDS - 1, length=(1, FOLDS), distinct=True),
    "data.val_fold": Rule(0, FOLDS - 1),
    "data.target_root": PATH,
    "data.train_fraction": FRACTION,
    "data.data_efficiency_rates": Rule(0, 1, open_low=True, length=(1, 100)),
    "data.img_size": Rule(1, 4096),  # a multiple of the backbone's patch: checked by build_model
    "data.resize_size": Rule(1, 8192),
    "data.color_jitter": Rule(0, 1),
    "data.hflip": None,
    "data.num_workers": Rule(0, 256),
    "data.synthetic_images": Rule(1, 100_000),
    "data.synthetic_size": Rule(16, 1024),  # what the face generator draws
    "data.synthetic_subjects": Rule(2, 10_000),
    "data.synthetic_folds": Rule(2, FOLDS),
    "data.synthetic_seed": SEED,
    "data.skip_bad": None,
    "model.backbone": NAME,
    "model.backbone_weights": Rule(check=_weight_source, text="hub, synthetic, random or a weight file"),
    "model.backbone_kwargs": Rule(check=timm_kwargs_problem, text=f"at most {MAX_TIMM_KWARGS} timm arguments; sizes bounded"),
    "model.moke": _choices("model", "moke"),
    "model.d": Rule(1, 256),
    "model.dilations": Rule(1, 64, length=(1, 8)),
    "model.ca_size": Rule(1, 15, check=_odd, text="odd"),
    "model.use_mrf": None,
    "model.use_ca": None,
    "model.collaborate": None,
    "model.aux_head": None,
    "model.dropout": UNIT,
    "model.scale": OUTPUT_SCALE,
    "model.task": _choices("model", "task"),
    "model.method": _choices("model", "method"),
    "model.adapter_bottleneck": Rule(1, 4096),
    "model.adapter_scale": OUTPUT_SCALE,
    "model.lora_rank": Rule(1, 1024),
    "model.lora_alpha": Rule(0, 10_000, open_low=True),
    "model.lora_targets": Rule(choices=("q", "k", "v"), length=(1, 3), distinct=True),  # petl.LORA_TARGETS
    "model.vpt_prompts": Rule(1, 1024),
    "model.drop_path": UNIT,
    "model.recompute": None,
    "loss.name": _choices("loss", "name"),
    "loss.wdi": None,
    "loss.aux_weight": LOSS_WEIGHT,
    "loss.margin": UNIT,
    "loss.gamma_bounds": Rule(0, 100, open_low=True, length=(2, 2)),
    "loss.eps": Rule(0, 1e6, open_low=True),  # > 0 keeps the WDI ratio finite
    "loss.wdi_reduction": _choices("loss", "wdi_reduction"),
    "loss.intensity_weight": LOSS_WEIGHT,
    "train.epochs": Rule(1, 100_000),
    "train.steps": Rule(1, 10**9),
    "train.batch_size": Rule(1, 65_536),
    "train.lr": LEARNING_RATE,
    "train.head_lr": LEARNING_RATE,
    "train.min_lr": Rule(0, 10),
    "train.warmup_epochs": Rule(0, 100_000),
    "train.warmup_steps": Rule(0, 10**9),
    "train.weight_decay": Rule(0, 10),
    "train.betas": Rule(0, 1, open_high=True, length=(2, 2)),
    "train.grad_accum": Rule(1, 4096),
    "train.grad_clip": Rule(0, 1e6, open_low=True),
    "train.amp": _choices("train", "amp"),
    "train.compile": None,
    "train.device": _choices("train", "device"),
    "train.seed": SEED,
    "train.threshold": Rule(0, 1),
    "train.eval_every": Rule(1, 100_000),
    "train.eval_every_steps": Rule(1, 10**9),
    "train.checkpoint_every": Rule(1, 10**9),
}


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


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "") if not isinstance(hint, type) else hint.__name__


def coerce(value: Any, hint: Any) -> Any:
    """Ints (and YAML 1.1 strings like ``3e-4``) as floats where a float is expected; else ``value`` as is."""
    if hint is float or float in typing.get_args(hint):
        if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
            try:
                return float(value)
            except (ValueError, OverflowError):
                return value  # not a number, or an int beyond float: reported naming the field
    if typing.get_args(hint) == (float,) and _matches(value, hint):
        return [coerce(v, float) for v in value]
    return value


def value_problem(value: Any, hint: Any, rule: Rule | None) -> str | None:
    """What is wrong with ``value`` for a field of type ``hint`` and ``rule`` (None when it is valid).

    A list's length is checked before its values, so a huge list costs nothing more.
    """
    if rule is not None and rule.length is not None and isinstance(value, list) and len(value) > rule.length[1]:
        return rule.problem(value)
    if not _matches(value, hint):
        return f"{_show(value)} is not a valid {_type_name(hint)}"
    return None if value is None or rule is None else rule.problem(value)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_spec(name: str) -> tuple[Any, Rule | None]:
    """The type hint and `Rule` of field ``section.key`` (``model.d``): what a checkpoint's
    description is checked against, so that configs and checkpoints share one table."""
    section, _, key = name.partition(".")
    return _section_fields(section)[key], FIELD_RULES[name]


def check_fields(section: Any, name: str) -> None:
    """Coerce and check every field of a section dataclass against its type and `FIELD_RULES`.

    Called by each section's ``__post_init__``, so a config built in any way (YAML, ``--set``,
    ``dataclasses.replace``, Python) is checked; the error names the field, the value and what is valid.
    """
    for key, hint in _hints(type(section)).items():
        if dataclasses.is_dataclass(hint):
            continue  # Config's sections check themselves
        field_name = f"{name}.{key}" if name else key
        value = coerce(getattr(section, key), hint)
        problem = value_problem(value, hint, FIELD_RULES[field_name])
        if problem:
            raise AUFormerError(f"config {field_name}: {problem}")
        setattr(section, key, value)


def preset_names() -> list[str]:
    """Names of the presets shipped in the package (``synthetic``, ``bp4d``, ...)."""
    return sorted(p.name.removesuffix(".yaml") for p in _PRESETS.iterdir() if p.name.endswith(".yaml"))


def _parse_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load`` (a ``!!python/object`` tag is refused, never built); any failure is one line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise AUFormerError(f"{where}: not valid YAML for auformer ({one_line(error)})") from None
    except RecursionError:
        raise AUFormerError(f"{where}: YAML nested too deeply") from None


def _read_preset(preset: str) -> dict[str, Any]:
    """Read a preset by package name or YAML path (at most ``MAX_YAML_BYTES``) into a plain dict."""
    if preset.endswith((".yaml", ".yml")):
        path = Path(preset)
        if not path.is_file():
            raise FileNotFoundError(f"preset file {path} does not exist")
        with open(path, "rb") as file:
            raw = file.read(MAX_YAML_BYTES + 1)
        if len(raw) > MAX_YAML_BYTES:
            raise AUFormerError(f"preset {path}: larger than {MAX_YAML_BYTES // 1024} kB; a config is a few kB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise AUFormerError(f"preset {path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    else:
        if preset not in preset_names():
            close = difflib.get_close_matches(preset, preset_names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AUFormerError(f"unknown preset {preset!r}{hint}; choose from {', '.join(preset_names())} or a .yaml path")
        text = _PRESETS.joinpath(f"{preset}.yaml").read_text()
    data = _parse_yaml(text, f"preset {preset}") or {}
    if not isinstance(data, dict):
        raise AUFormerError(f"preset {preset}: expected a mapping of sections (data, model, loss, train)")
    return data


def _unknown_key(name: str, valid: list[str], prefix: str) -> AUFormerError:
    """Error naming the unknown key and the closest valid one (``train.lrr`` -> ``train.lr``)."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return AUFormerError(f"unknown config key {_show(prefix + str(name))}{hint}")


def _section_fields(section: str) -> dict[str, Any]:
    """Field name -> resolved type hint of one section dataclass."""
    sections = _hints(Config)
    if section not in sections or section == "preset":
        raise _unknown_key(section, [n for n in sections if n != "preset"], "")
    return _hints(sections[section])


def apply_values(values: dict[str, dict[str, Any]], config: Config) -> Config:
    """Return a copy of ``config`` with ``{section: {key: value}}`` applied (each section checks itself)."""
    sections = {}
    for section, updates in values.items():
        hints = _section_fields(section)
        if not isinstance(updates, dict):
            raise AUFormerError(f"config section {section!r} must be a mapping, got {_show(updates)}")
        for key in updates:
            if key not in hints:
                raise _unknown_key(key, list(hints), f"{section}.")
        sections[section] = dataclasses.replace(getattr(config, section), **updates)
    return dataclasses.replace(config, **sections)


def parse_overrides(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """Parse ``["train.lr=3e-4", "data.aus=[1, 2]"]`` into ``{section: {key: value}}``.

    Values are YAML scalars/lists (``yaml.safe_load``, never ``eval``), each item at most
    ``MAX_OVERRIDE_CHARS`` long.
    """
    values: dict[str, dict[str, Any]] = {}
    for item in overrides:
        if len(item) > MAX_OVERRIDE_CHARS:
            raise AUFormerError(f"--set {_show(item)}: longer than {MAX_OVERRIDE_CHARS} characters")
        name, sep, raw = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not key:
            raise AUFormerError(f"--set {item!r}: expected section.key=value, e.g. train.lr=3e-4")
        values.setdefault(section, {})[key] = _parse_yaml(raw, f"--set {item!r}: the value")
    return values


def load_config(preset: str = DEFAULT_PRESET, overrides: list[str] = (), data_dir: str | None = None) -> Config:
    """Build a validated ``Config`` from a preset (name or YAML path), ``--set`` overrides and ``--data``."""
    values = _read_preset(preset)
    config = Config(preset=values.pop("preset", preset))
    config = apply_values(values, config)
    config = apply_values(parse_overrides(list(overrides)), config)
    if data_dir is not None:
        # Own data under the synthetic preset's settings is no longer "synthetic" (checkpoints record it).
        name = Path(data_dir).name if config.data.dataset == "synthetic" else config.data.dataset
        config = apply_values({"data": {"root": str(data_dir), "dataset": name}}, config)
    return validate(config)


def validate(config: Config) -> Config:
    """Cross-field checks that single-field rules cannot express."""
    data, train = config.data, config.train
    if data.dataset != "synthetic" and data.root is None:
        raise AUFormerError(f"preset {config.preset!r} needs a prepared dataset folder: pass --data DIR (see `auformer prepare`)")
    if data.val_fold is not None and data.val_fold == data.fold:
        raise AUFormerError(f"config data.val_fold: {data.val_fold} must differ from data.fold")
    if data.resize_size is not None and data.resize_size < data.img_size:
        raise AUFormerError(f"config data.resize_size: {data.resize_size} must be >= data.img_size ({data.img_size})")
    present = min(data.synthetic_subjects, data.synthetic_images)  # subjects that get at least one face
    if data.root is None and data.synthetic_folds > present:
        raise AUFormerError(
            f"config data.synthetic_folds: {data.synthetic_folds} must be <= the subjects with faces "
            f"({present}: data.synthetic_subjects, data.synthetic_images)"
        )
    for name in ("lr", "head_lr"):
        rate = getattr(train, name)
        if rate is not None and train.min_lr > rate:
            raise AUFormerError(f"config train.min_lr: {train.min_lr} must be <= train.{name} ({rate})")
    _validate_switches(config)
    return config


def _validate_switches(config: Config) -> None:
    """Refuse ablation-switch combinations that have no meaning (docs/training.md, "Ablation switches")."""
    model, loss = config.model, config.loss
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


def save_config(config: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (what `--preset path.yaml` reads back)."""
    from auformer.files import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
