"""The config section dataclasses (`DataConfig`, `ModelConfig`, `LossConfig`, `TrainConfig`, `Config`).

Each field has a one-line comment saying what it means; each section checks itself against
`FIELD_RULES` when it is built (`check_fields`), however it is built.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from typing import Any

from auformer.config.rules import FIELD_RULES, Rule, coerce, show, value_problem
from auformer.errors import AUFormerError

DEFAULT_PRESET = "synthetic"


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
    # none, or val: one threshold per AU picked on the validation split (data.val_fold, never the test
    # split), stored in the checkpoint and used by evaluate and detect; metrics.json reports both
    threshold_search: str = "none"
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


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def field_spec(name: str) -> tuple[Any, Rule | None]:
    """The type hint and `Rule` of field ``section.key`` (``model.d``): what a checkpoint's
    description is checked against, so that configs and checkpoints share one table."""
    section, _, key = name.partition(".")
    return section_fields(section)[key], FIELD_RULES[name]


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


def unknown_key(name: str, valid: list[str], prefix: str) -> AUFormerError:
    """Error naming the unknown key and the closest valid one (``train.lrr`` -> ``train.lr``)."""
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
    return AUFormerError(f"unknown config key {show(prefix + str(name))}{hint}")


def section_fields(section: str) -> dict[str, Any]:
    """Field name -> resolved type hint of one section dataclass."""
    sections = _hints(Config)
    if section not in sections or section == "preset":
        raise unknown_key(section, [n for n in sections if n != "preset"], "")
    return _hints(sections[section])
