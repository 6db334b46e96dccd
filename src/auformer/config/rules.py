"""The validation rules of config fields: `Rule`, the table `FIELD_RULES` and the type checks.

Every field of every section has an entry, so a value read from YAML, ``--set`` or a checkpoint's
description is checked against the same bounds, choices and lengths (docs/training.md, "Valid values").
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from auformer.aus import AU_NAMES

# Values checked against these so that YAML typos fail early instead of deep in training.
_CHOICES = {
    ("model", "moke"): ("fused", "reference"),
    ("model", "task"): ("occurrence", "intensity", "both"),
    ("model", "method"): ("auformer", "full-finetune", "linear", "adapter", "adaptformer", "lora", "vpt", "convpass"),
    ("loss", "name"): ("mdwa", "dwa", "mwa", "wa", "wce"),
    ("loss", "wdi_reduction"): ("batch", "sample"),
    ("train", "amp"): ("none", "bf16", "fp16"),
    ("train", "device"): ("auto", "cpu", "cuda"),
    ("train", "threshold_search"): ("none", "val"),
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
                return f"{show(value)} has {len(value)} values; {wanted} allowed"
            if self.distinct and len(set(value)) != len(value):
                return f"{show(value)}: the values must differ"
            problems = (self._scalar_problem(item) for item in value)
            first = next((text for text in problems if text), None)
            return f"{show(value)}: {first}" if first else None
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
            return f"{show(value)} is not one of {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not _within(value, self):
            return f"{show(value)} must be {_interval(self)}"
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


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters (a value may be a huge list or string)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _name(value: str) -> str | None:
    if not value.strip() or len(value) > 255 or not value.isprintable():
        return f"{show(value)} must be a non-empty name of at most 255 printable characters"
    return None


def _path(value: str) -> str | None:
    if not value.strip() or len(value) > 4096 or "\x00" in value:
        return f"{show(value)} must be a non-empty path of at most 4096 characters without NUL"
    return None


def _facs_au(value: int) -> str | None:
    return None if value in AU_NAMES else f"{value} is not a FACS action unit number (AU_NAMES in auformer/aus.py)"


def _odd(value: int) -> str | None:
    return None if value % 2 else f"{value} must be odd (a centred S x S neighbourhood)"


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt", ".npz")  # backbone weight files model/backbone.py reads
WEIGHT_SOURCES = ("hub", "synthetic", "random")  # the names backbone_weights takes besides a file path


def _weight_source(value: str) -> str | None:
    """A weight source by name, or something that looks like a weight file (its existence is checked at setup)."""
    if value in WEIGHT_SOURCES or (value.endswith(WEIGHT_SUFFIXES) and not _path(value)):
        return None
    return f"{show(value)} is not one of {', '.join(WEIGHT_SOURCES)} nor a weight file ({', '.join(WEIGHT_SUFFIXES)})"


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
            return f"key {show(key)} is not an argument name"
        if not (item is None or isinstance(item, (bool, int, float)) or (isinstance(item, str) and len(item) <= 100)):
            return f"{key}: {show(item)} must be a number, a string, true/false or null"
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
    "train.threshold_search": _choices("train", "threshold_search"),
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
        return f"{show(value)} is not a valid {_type_name(hint)}"
    return None if value is None or rule is None else rule.problem(value)
